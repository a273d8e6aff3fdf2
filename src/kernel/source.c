/* Assembly of a kernel's full source: prelude, template definitions, user
 * header, signature + index prologue (from the backend's dialect), accessor
 * macros, body. The text is a pure function of its inputs, so equal calls
 * produce byte-identical source and the cache hits across processes. */
#include <ctype.h>
#include <string.h>

#include "kernel/kernel.h"

static int is_ident_char(char c) { return isalnum((unsigned char)c) || c == '_'; }

int zmlxi_mentions_identifier(const char *text, const char *ident) {
  if (!text || !ident || !*ident) return 0;
  size_t n = strlen(ident);
  for (const char *p = strstr(text, ident); p; p = strstr(p + 1, ident)) {
    int starts = p == text || !is_ident_char(p[-1]);
    if (starts && !is_ident_char(p[n])) return 1;
  }
  return 0;
}

/* Compute type of a storage dtype: 16-bit floats compute in float. */
static const char *compute_type(const zmlx_dialect *d, zmlx_dtype dt) {
  if (dt == ZMLX_F16 || dt == ZMLX_BF16) return "float";
  return d->type_name(dt);
}

static void emit_templates(zmlx_sb *sb, const zmlx_dialect *d, const zmlx_template_arg *t, int n) {
  for (int i = 0; i < n; i++) {
    switch (t[i].kind) {
      case ZMLX_TEMPLATE_DTYPE: {
        const char *dn = zmlx_dtype_name(t[i].dtype);
        zmlxi_sb_printf(sb, "typedef %s %s;\n", d->type_name(t[i].dtype), t[i].name);
        zmlxi_sb_printf(sb, "typedef %s %s_compute;\n", compute_type(d, t[i].dtype), t[i].name);
        zmlxi_sb_printf(sb, "#define %s_load(p, i) zmlx_load_%s((p), (i))\n", t[i].name, dn);
        zmlxi_sb_printf(sb, "#define %s_store(p, i, v) zmlx_store_%s((p), (i), (v))\n", t[i].name, dn);
        break;
      }
      case ZMLX_TEMPLATE_INT:
        zmlxi_sb_printf(sb, "#define %s (%lld)\n", t[i].name, (long long)t[i].value);
        break;
      case ZMLX_TEMPLATE_BOOL:
        zmlxi_sb_printf(sb, "#define %s %d\n", t[i].name, t[i].value ? 1 : 0);
        break;
    }
  }
}

/* x_load(i) for every array, x_store(i, v) for outputs. */
static void emit_accessors(zmlx_sb *sb, const zmlx_kernel *k, const zmlx_dtype *dtypes) {
  int n = k->n_inputs + k->n_outputs;
  for (int i = 0; i < n; i++) {
    const char *dn = zmlx_dtype_name(dtypes[i]);
    zmlxi_sb_printf(sb, "#define %s_load(i) zmlx_load_%s(%s, (i))\n", k->names[i], dn, k->names[i]);
    if (i >= k->n_inputs)
      zmlxi_sb_printf(sb, "#define %s_store(i, v) zmlx_store_%s(%s, (i), (v))\n", k->names[i], dn,
                     k->names[i]);
  }
}

static int count_lines(const char *s, size_t len) {
  int n = 0;
  for (size_t i = 0; i < len; i++) n += s[i] == '\n';
  return n;
}

zmlx_status zmlxi_kernel_assemble(const zmlx_kernel *k, const zmlx_dialect *d,
                                 const zmlx_dtype *dtypes, const zmlx_template_arg *templates,
                                 int n_templates, int guard_grid, char **source,
                                 int *body_first_line) {
  zmlx_kparam params[ZMLX_KERNEL_MAX_ARRAYS + ZMLX_KERNEL_MAX_PARAMS];
  int n_arrays = k->n_inputs + k->n_outputs;
  for (int i = 0; i < n_arrays; i++) {
    params[i] = (zmlx_kparam){.name = k->names[i],
                              .dtype = dtypes[i],
                              .is_output = i >= k->n_inputs,
                              .want_shape = k->want_shape[i],
                              .want_strides = k->want_strides[i],
                              .want_ndim = k->want_ndim[i]};
  }
  for (int i = 0; i < k->n_params; i++)
    params[n_arrays + i] = (zmlx_kparam){
        .name = k->param_names[i], .dtype = k->param_dtypes[i], .is_scalar = 1};
  zmlx_kspec spec = {.entry = k->entry,
                     .params = params,
                     .n_params = n_arrays + k->n_params,
                     .guard_grid = guard_grid,
                     .uses_simd = k->uses_simd,
                     .uses_dynamic_shared = k->uses_dynamic_shared};

  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  zmlxi_sb_append(&sb, d->prelude);
  zmlxi_sb_printf(&sb, "\n/* ---- zmlx kernel '%s' ---- */\n", k->name);
  emit_templates(&sb, d, templates, n_templates);
  if (k->header && *k->header) {
    zmlxi_sb_append(&sb, k->header);
    zmlxi_sb_append(&sb, "\n");
  }
  d->emit_kernel_begin(&spec, &sb);
  emit_accessors(&sb, k, dtypes);
  int first = count_lines(sb.data ? sb.data : "", sb.len) + 1;
  zmlxi_sb_append(&sb, k->body);
  zmlxi_sb_append(&sb, "\n");
  d->emit_kernel_end(&spec, &sb);
  if (body_first_line) *body_first_line = first;
  return zmlxi_sb_finish(&sb, source);
}
