/* The kernel object (MLX metal_kernel analog): create from names + body,
 * specialise per device / dtypes / template values, launch. The launch path
 * is the hot path: after the first call with a given specialisation it does
 * a short scan of the kernel's variants, fills the argument array on the
 * stack and calls the backend's launch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/graph.h"
#include "kernel/kernel.h"

/* ----------------------------------------------------------------- create */

#define MAX_NAME_LEN 63

static int is_identifier(const char *s) {
  if (!s || !*s || !(s[0] == '_' || (s[0] >= 'a' && s[0] <= 'z') || (s[0] >= 'A' && s[0] <= 'Z')))
    return 0;
  for (const char *p = s; *p; p++)
    if (!(*p == '_' || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
      return 0;
  return 1;
}

static int valid_identifier(const char *s) { return is_identifier(s) && strlen(s) <= MAX_NAME_LEN; }

/* Why `s` may not name a kernel's array, parameter or template, or NULL.
 * The body is compiled for every backend, so a word any of their languages
 * reserves is refused at create, not by one compiler's log later. */
static const char *reserved_name_reason(const char *s, char *buf, size_t cap) {
  static const char *const c_keywords[] = {
      "auto", "break", "case", "char", "const", "continue", "default", "do", "double", "else",
      "enum", "extern", "float", "for", "goto", "if", "inline", "int", "long", "register",
      "restrict", "return", "short", "signed", "sizeof", "static", "struct", "switch",
      "typedef", "union", "unsigned", "void", "volatile", "while", "_Bool", "_Alignas",
      "_Alignof", "_Atomic", "_Complex", "_Generic", "_Imaginary", "_Noreturn",
      "_Static_assert", "_Thread_local", NULL};
  /* The dialect's index names, defined in every kernel (docs/DIALECT.md). */
  static const char *const dialect_names[] = {
      "thread_position_in_grid", "thread_position_in_threadgroup", "threadgroup_position_in_grid",
      "threads_per_threadgroup", "threadgroups_per_grid", "grid_size",
      "thread_index_in_threadgroup", "thread_index_in_simdgroup", "simdgroup_index_in_threadgroup",
      "threads_per_simdgroup", "simdgroups_per_threadgroup", NULL};
  for (int i = 0; c_keywords[i]; i++)
    if (!strcmp(s, c_keywords[i])) return "a C keyword";
  for (int i = 0; dialect_names[i]; i++)
    if (!strcmp(s, dialect_names[i])) return "an index name the dialect defines in every kernel";
  if (!strncmp(s, "zmlx_", 5) || !strncmp(s, "ZMLX_", 5) || !strncmp(s, "__", 2))
    return "in a prefix the dialect reserves (zmlx_, ZMLX_, __)";
  for (int b = 0; b < ZMLX_BACKEND_COUNT; b++) {
    const zmlx_dialect *d = zmlxi_dialect_for((zmlx_backend)b);
    for (int i = 0; d && d->reserved_words && d->reserved_words[i]; i++)
      if (!strcmp(s, d->reserved_words[i])) {
        snprintf(buf, cap, "reserved in %s", d->language);
        return buf;
      }
  }
  return NULL;
}

/* A kernel name, array, parameter or template name: an identifier of at
 * most MAX_NAME_LEN characters that no backend's language reserves. */
static zmlx_status check_one_name(const char *kernel, const char *what, const char *s) {
  if (!s) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "kernel '%s': %s is NULL", kernel, what);
  if (!is_identifier(s))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': %s '%s' is not a C identifier", kernel,
                     what, s);
  if (strlen(s) > MAX_NAME_LEN)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': %s '%.20s...' is %zu characters long "
                     "(at most %d)", kernel, what, s, strlen(s), MAX_NAME_LEN);
  char reason[64];
  const char *why = reserved_name_reason(s, reason, sizeof reason);
  if (why)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': %s '%s' is %s; pick another name", kernel,
                     what, s, why);
  return ZMLX_OK;
}

static zmlx_status check_names(const char *kernel, const char *what, const char *const *names,
                               int n) {
  if (n > 0 && !names)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "kernel '%s': %s names are NULL", kernel, what);
  for (int i = 0; i < n; i++) {
    char label[48];
    snprintf(label, sizeof label, "%s name %d", what, i);
    ZMLX_CHECK(check_one_name(kernel, label, names[i]));
  }
  return ZMLX_OK;
}

/* `name` against the names the kernel scope already has for the arrays
 * (x, its geometry x_shape, x_strides, x_ndim and its accessors). */
static zmlx_status check_param_vs_arrays(const zmlx_kernel_desc *d, const char *name) {
  static const char *const suffixes[] = {"", "_shape", "_strides", "_ndim", "_shape_v",
                                         "_strides_v", "_load", "_store"};
  for (int io = 0; io < 2; io++) {
    const char *const *arrays = io ? d->output_names : d->input_names;
    int n = io ? d->n_outputs : d->n_inputs;
    for (int i = 0; i < n; i++) {
      size_t len = strlen(arrays[i]);
      if (strncmp(name, arrays[i], len)) continue;
      for (size_t k = 0; k < sizeof suffixes / sizeof *suffixes; k++)
        if (!strcmp(name + len, suffixes[k]))
          return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': param '%s' clashes with %s '%s'%s",
                           d->name, name, io ? "output" : "input", arrays[i],
                           *suffixes[k] ? " (its geometry)" : "");
    }
  }
  return ZMLX_OK;
}

static zmlx_status check_desc(const zmlx_kernel_desc *d) {
  /* The kernel's own name only goes into its entry point, zmlx_k_<name>. */
  if (!is_identifier(d->name))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel: name '%s' is not a C identifier",
                     d->name ? d->name : "(null)");
  if (strlen(d->name) > MAX_NAME_LEN)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel: name '%.20s...' is %zu characters long (at "
                     "most %d)", d->name, strlen(d->name), MAX_NAME_LEN);
  if (!d->source) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "kernel '%s': source is NULL", d->name);
  if (d->n_inputs < 0 || d->n_outputs < 1 ||
      d->n_inputs + d->n_outputs > ZMLX_KERNEL_MAX_ARRAYS)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG,
                     "kernel '%s': needs at least one output and at most %d arrays (got %d inputs, "
                     "%d outputs)", d->name, ZMLX_KERNEL_MAX_ARRAYS, d->n_inputs, d->n_outputs);
  if (d->n_params < 0 || d->n_params > ZMLX_KERNEL_MAX_PARAMS)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': at most %d scalar params", d->name,
                     ZMLX_KERNEL_MAX_PARAMS);
  ZMLX_CHECK(check_names(d->name, "input", d->input_names, d->n_inputs));
  ZMLX_CHECK(check_names(d->name, "output", d->output_names, d->n_outputs));
  ZMLX_CHECK(check_names(d->name, "param", d->param_names, d->n_params));
  for (int i = 0; i < d->n_params; i++) {
    ZMLX_CHECK(check_param_vs_arrays(d, d->param_names[i]));
    for (int j = 0; j < i; j++)
      if (!strcmp(d->param_names[i], d->param_names[j]))
        return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': param name '%s' is used twice",
                         d->name, d->param_names[i]);
  }
  for (int i = 0; i < d->n_params; i++) {
    zmlx_dtype t = d->param_dtypes ? d->param_dtypes[i] : ZMLX_F32;
    if (t != ZMLX_F32 && t != ZMLX_F64 && t != ZMLX_I32 && t != ZMLX_U32 && t != ZMLX_I64)
      return zmlxi_fail(ZMLX_ERR_DTYPE, "kernel '%s': param '%s' has dtype %s (use f32, f64, i32, "
                       "u32 or i64)", d->name, d->param_names[i], zmlx_dtype_name(t));
  }
  return ZMLX_OK;
}

static void scan_references(zmlx_kernel *k) {
  char ident[96];
  for (int i = 0; i < k->n_inputs + k->n_outputs; i++) {
    const char *n = k->names[i];
#define MENTIONS(suffix) \
  (snprintf(ident, sizeof ident, "%s" suffix, n), \
   zmlxi_mentions_identifier(k->body, ident) || zmlxi_mentions_identifier(k->header, ident))
    k->want_shape[i] = (unsigned char)MENTIONS("_shape");
    k->want_strides[i] = (unsigned char)MENTIONS("_strides");
    k->want_ndim[i] = (unsigned char)MENTIONS("_ndim");
#undef MENTIONS
  }
  const char *texts[2] = {k->body, k->header};
  for (int t = 0; t < 2; t++) {
    if (!texts[t]) continue;
    k->uses_barrier |= strstr(texts[t], "zmlx_barrier") != NULL;
    k->uses_simd |= strstr(texts[t], "zmlx_simd_") != NULL;
    k->uses_dynamic_shared |= strstr(texts[t], "zmlx_dynamic_shared") != NULL;
  }
}

static zmlx_status copy_strings(char ***dst, const char *const *src, int n) {
  *dst = calloc((size_t)(n ? n : 1), sizeof **dst);
  if (!*dst) return ZMLX_ERR_OUT_OF_MEMORY;
  for (int i = 0; i < n; i++)
    if (!((*dst)[i] = zmlxi_strdup(src[i]))) return ZMLX_ERR_OUT_OF_MEMORY;
  return ZMLX_OK;
}

zmlx_status zmlx_kernel_create(const zmlx_kernel_desc *desc, zmlx_kernel **out) {
  ZMLX_REQUIRE_ARG(desc);
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_CHECK(check_desc(desc));
  zmlx_kernel *k = calloc(1, sizeof *k);
  if (!k) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  k->n_inputs = desc->n_inputs;
  k->n_outputs = desc->n_outputs;
  k->n_params = desc->n_params;
  k->ensure_row_contiguous = desc->ensure_row_contiguous;
  k->atomic_outputs = desc->atomic_outputs;
  pthread_mutex_init(&k->lock, NULL);
  int ok = (k->name = zmlxi_strdup(desc->name)) && (k->body = zmlxi_strdup(desc->source)) &&
           (!desc->header || (k->header = zmlxi_strdup(desc->header)));
  size_t elen = strlen(desc->name) + 8;
  ok = ok && (k->entry = malloc(elen));
  if (ok) snprintf(k->entry, elen, "zmlx_k_%s", desc->name);
  const char *all[ZMLX_KERNEL_MAX_ARRAYS];
  for (int i = 0; i < k->n_inputs; i++) all[i] = desc->input_names[i];
  for (int i = 0; i < k->n_outputs; i++) all[k->n_inputs + i] = desc->output_names[i];
  ok = ok && copy_strings(&k->names, all, k->n_inputs + k->n_outputs) == ZMLX_OK;
  ok = ok && copy_strings(&k->param_names, desc->param_names, k->n_params) == ZMLX_OK;
  ok = ok && (k->param_dtypes = calloc((size_t)k->n_params + 1, sizeof *k->param_dtypes));
  for (int i = 0; ok && i < k->n_params; i++)
    k->param_dtypes[i] = desc->param_dtypes ? desc->param_dtypes[i] : ZMLX_F32;
  if (!ok) {
    zmlx_kernel_destroy(k);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  }
  for (int i = 0; i < k->n_inputs + k->n_outputs; i++)
    for (int j = 0; j < i; j++)
      if (!strcmp(k->names[i], k->names[j])) {
        zmlx_status st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': array name '%s' is used twice",
                                   k->name, k->names[i]);
        zmlx_kernel_destroy(k);
        return st;
      }
  scan_references(k);
  *out = k;
  return ZMLX_OK;
}

#define ZK_BODY_MARKER "//-- body --\n"

zmlx_status zmlxi_kernel_create_from_zk(const zmlx_kernel_desc *desc, zmlx_kernel **out) {
  ZMLX_REQUIRE_ARG(desc);
  ZMLX_REQUIRE_ARG(desc->source);
  if (desc->header)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': a .zk file carries its own header",
                     desc->name ? desc->name : "(null)");
  const char *marker = strstr(desc->source, ZK_BODY_MARKER);
  if (!marker) return zmlx_kernel_create(desc, out);
  size_t n = (size_t)(marker - desc->source);
  char *header = malloc(n + 1);
  if (!header) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  memcpy(header, desc->source, n);
  header[n] = '\0';
  zmlx_kernel_desc d = *desc;
  d.header = header;
  d.source = marker + strlen(ZK_BODY_MARKER);
  zmlx_status st = zmlx_kernel_create(&d, out);
  free(header);
  return st;
}

static void free_strings(char **s, int n) {
  if (!s) return;
  for (int i = 0; i < n; i++) free(s[i]);
  free(s);
}

zmlx_status zmlx_kernel_destroy(zmlx_kernel *k) {
  if (!k) return ZMLX_OK;
  for (int v = 0; v < k->n_variants; v++)
    for (int t = 0; t < k->variants[v].n_templates; t++) free((char *)k->variants[v].templates[t].name);
  free(k->variants);
  free_strings(k->names, k->n_inputs + k->n_outputs);
  free_strings(k->param_names, k->n_params);
  free(k->param_dtypes);
  free(k->name);
  free(k->entry);
  free(k->body);
  free(k->header);
  pthread_mutex_destroy(&k->lock);
  free(k);
  return ZMLX_OK;
}

/* --------------------------------------------------------- specialisation */

static zmlx_status check_templates(const zmlx_kernel *k, const zmlx_template_arg *t, int n) {
  if (n < 0 || n > ZMLX_KERNEL_MAX_TEMPLATES || (n && !t))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': %d template args (at most %d)", k->name, n,
                     ZMLX_KERNEL_MAX_TEMPLATES);
  for (int i = 0; i < n; i++) {
    if (!valid_identifier(t[i].name))
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': template name '%s' is not an identifier",
                       k->name, t[i].name ? t[i].name : "(null)");
    if (t[i].kind == ZMLX_TEMPLATE_DTYPE && zmlx_dtype_size(t[i].dtype) == 0)
      return zmlxi_fail(ZMLX_ERR_DTYPE, "kernel '%s': template '%s' has an invalid dtype", k->name,
                       t[i].name);
    if ((unsigned)t[i].kind > ZMLX_TEMPLATE_BOOL)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': template '%s' has an invalid kind",
                       k->name, t[i].name);
  }
  return ZMLX_OK;
}

static int templates_equal(const zmlx_template_arg *a, const zmlx_template_arg *b, int n) {
  for (int i = 0; i < n; i++) {
    if (a[i].kind != b[i].kind || strcmp(a[i].name, b[i].name)) return 0;
    if (a[i].kind == ZMLX_TEMPLATE_DTYPE ? a[i].dtype != b[i].dtype : a[i].value != b[i].value)
      return 0;
  }
  return 1;
}

static zmlx_kernel_variant *find_variant(zmlx_kernel *k, zmlx_device *dev, const zmlx_dtype *dt,
                                         const zmlx_template_arg *t, int nt) {
  int na = k->n_inputs + k->n_outputs;
  for (int v = 0; v < k->n_variants; v++) {
    zmlx_kernel_variant *var = &k->variants[v];
    if (var->device == dev && var->n_templates == nt &&
        !memcmp(var->dtypes, dt, (size_t)na * sizeof *dt) && templates_equal(var->templates, t, nt))
      return var;
  }
  return NULL;
}

static zmlx_kernel_variant *add_variant(zmlx_kernel *k, zmlx_device *dev, const zmlx_dtype *dt,
                                        const zmlx_template_arg *t, int nt) {
  if (k->n_variants == k->cap_variants) {
    int cap = k->cap_variants ? 2 * k->cap_variants : 4;
    zmlx_kernel_variant *nv = realloc(k->variants, (size_t)cap * sizeof *nv);
    if (!nv) return NULL;
    k->variants = nv;
    k->cap_variants = cap;
  }
  zmlx_kernel_variant *var = &k->variants[k->n_variants];
  memset(var, 0, sizeof *var);
  var->device = dev;
  memcpy(var->dtypes, dt, (size_t)(k->n_inputs + k->n_outputs) * sizeof *dt);
  for (int i = 0; i < nt; i++) {
    var->templates[i] = t[i];
    if (!(var->templates[i].name = zmlxi_strdup(t[i].name))) {
      for (int j = 0; j < i; j++) free((char *)var->templates[j].name);
      return NULL;
    }
  }
  var->n_templates = nt;
  k->n_variants++;
  return var;
}

/* Guarding out-of-grid threads is only safe when no thread waits at a barrier. */
static int wants_guard(const zmlx_kernel *k) { return !(k->uses_barrier || k->uses_simd); }

static zmlx_status compile_variant(zmlx_kernel *k, zmlx_device *dev, const zmlx_dtype *dt,
                                   const zmlx_template_arg *t, int nt, void **function) {
  char *src = NULL;
  int body_line = 0;
  ZMLX_CHECK(zmlxi_kernel_assemble(k, dev->ops->dialect, dt, t, nt, wants_guard(k), &src, &body_line));
  char what[160];
  snprintf(what, sizeof what, "kernel '%s'", k->name);
  zmlx_compile_request req = {.device = dev, .entry = k->entry, .source = src, .options = "",
                              .body_first_line = body_line, .what = what};
  zmlx_cache_key key;
  zmlx_status st = zmlxi_cache_make_key(&req, &key);
  if (st == ZMLX_OK) st = zmlxi_cache_get_function(&req, &key, function);
  free(src);
  return st;
}

/* The loaded function for this call, compiling at most once per variant. */
static zmlx_status get_function(zmlx_kernel *k, zmlx_device *dev, const zmlx_dtype *dt,
                                const zmlx_template_arg *t, int nt, void **function) {
  uint64_t gen = zmlxi_cache_generation();
  pthread_mutex_lock(&k->lock);
  zmlx_kernel_variant *var = find_variant(k, dev, dt, t, nt);
  if (var && var->function && var->generation == gen) {
    *function = var->function;
    pthread_mutex_unlock(&k->lock);
    return ZMLX_OK;
  }
  /* Compile under the kernel's lock: concurrent first calls of the same
   * kernel wait for one compile instead of racing several. */
  zmlx_status st = compile_variant(k, dev, dt, t, nt, function);
  if (st == ZMLX_OK) {
    if (!var) var = add_variant(k, dev, dt, t, nt);
    if (var) {
      var->function = *function;
      var->generation = gen;
    }
  }
  pthread_mutex_unlock(&k->lock);
  return st;
}

/* ------------------------------------------------------------------ launch */

static zmlx_status resolve_device(const zmlx_kernel *k, zmlx_kernel_call *c, zmlx_device **out) {
  zmlx_device *dev = c->device;
  if (!dev && c->stream) dev = c->stream->device;
  for (int i = 0; i < k->n_inputs && !dev; i++) dev = c->inputs[i]->buffer->device;
  for (int i = 0; i < k->n_outputs && !dev; i++)
    if (c->outputs[i]) dev = c->outputs[i]->buffer->device;
  ZMLX_CHECK(zmlxi_device_resolve(dev, &dev));
  if (c->stream && c->stream->device != dev)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': the stream belongs to another device",
                     k->name);
  for (int i = 0; i < k->n_inputs; i++)
    if (c->inputs[i]->buffer->device != dev)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': input '%s' is on %s device %d, the "
                       "launch is on %s device %d", k->name, k->names[i],
                       zmlx_backend_name(c->inputs[i]->buffer->device->ops->kind),
                       c->inputs[i]->buffer->device->index, zmlx_backend_name(dev->ops->kind),
                       dev->index);
  *out = dev;
  return ZMLX_OK;
}

static zmlx_status check_call(const zmlx_kernel *k, const zmlx_kernel_call *c) {
  if (c->n_inputs != k->n_inputs || c->n_outputs != k->n_outputs)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s' takes %d input%s and %d output%s; the call "
                     "gives %d and %d", k->name, k->n_inputs, k->n_inputs == 1 ? "" : "s",
                     k->n_outputs, k->n_outputs == 1 ? "" : "s", c->n_inputs, c->n_outputs);
  if (k->n_inputs && !c->inputs)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "kernel '%s': inputs is NULL but the kernel takes %d",
                     k->name, k->n_inputs);
  for (int i = 0; i < k->n_inputs; i++)
    if (!c->inputs[i])
      return zmlxi_fail(ZMLX_ERR_NULL_ARG, "kernel '%s': input %d ('%s') is NULL", k->name, i,
                       k->names[i]);
  if (!c->outputs)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "kernel '%s': outputs (an array of %d slots) is NULL",
                     k->name, k->n_outputs);
  if (k->n_params && !c->params)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "kernel '%s': params is NULL but the kernel takes %d",
                     k->name, k->n_params);
  return check_templates(k, c->templates, c->n_templates);
}

static zmlx_status check_geometry(const zmlx_kernel *k, const zmlx_device *dev,
                                  const zmlx_kernel_call *c, uint32_t blocks[3],
                                  uint32_t threads[3]) {
  int64_t tg_total = 1;
  for (int d = 0; d < 3; d++) {
    if (c->grid[d] < 1 || c->grid[d] > (int64_t)UINT32_MAX || c->threadgroup[d] < 1)
      return zmlxi_fail(ZMLX_ERR_LAUNCH, "kernel '%s': grid (%lld, %lld, %lld) / threadgroup (%d, "
                       "%d, %d): every dimension must be in 1..%u", k->name,
                       (long long)c->grid[0], (long long)c->grid[1], (long long)c->grid[2],
                       c->threadgroup[0], c->threadgroup[1], c->threadgroup[2], UINT32_MAX);
    tg_total *= c->threadgroup[d];
    threads[d] = (uint32_t)c->threadgroup[d];
    blocks[d] = (uint32_t)((c->grid[d] + c->threadgroup[d] - 1) / c->threadgroup[d]);
    if (!wants_guard(k) && c->grid[d] % c->threadgroup[d])
      return zmlxi_fail(ZMLX_ERR_LAUNCH, "kernel '%s' uses barriers or SIMD helpers, so its grid "
                       "must be a multiple of the threadgroup (dimension %d: grid %lld, "
                       "threadgroup %d)", k->name, d, (long long)c->grid[d], c->threadgroup[d]);
  }
  int limit = dev->info.max_threads_per_threadgroup;
  if (k->uses_simd && !dev->info.native_simd && limit > 1024) limit = 1024;
  if (tg_total > limit)
    return zmlxi_fail(ZMLX_ERR_LAUNCH, "kernel '%s': threadgroup of %lld threads exceeds the "
                     "device limit of %d", k->name, (long long)tg_total, limit);
  for (int d = 0; d < 3; d++)
    if (dev->info.max_threadgroups[d] > 0 && blocks[d] > dev->info.max_threadgroups[d])
      return zmlxi_fail(ZMLX_ERR_LAUNCH, "kernel '%s': %u threadgroups along %c exceed the "
                       "device's %lld", k->name, blocks[d], "xyz"[d],
                       (long long)dev->info.max_threadgroups[d]);
  if (k->uses_dynamic_shared && c->dynamic_shared_bytes == 0)
    return zmlxi_fail(ZMLX_ERR_LAUNCH, "kernel '%s' reads zmlx_dynamic_shared but the call gives "
                     "no dynamic_shared_bytes", k->name);
  if (c->dynamic_shared_bytes > dev->info.max_shared_memory)
    return zmlxi_fail(ZMLX_ERR_LAUNCH, "kernel '%s': %zu bytes of dynamic threadgroup memory "
                     "exceed the device's %zu", k->name, c->dynamic_shared_bytes,
                     dev->info.max_shared_memory);
  return ZMLX_OK;
}

/* Allocate missing outputs; check given ones. Sets owned[i] for new ones. */
static zmlx_status prepare_outputs(const zmlx_kernel *k, zmlx_device *dev, zmlx_stream *s,
                                   zmlx_kernel_call *c, int *owned) {
  for (int i = 0; i < k->n_outputs; i++) {
    const char *name = k->names[k->n_inputs + i];
    owned[i] = 0;
    int wants_new = c->output_shapes && c->output_shapes[i];
    if (c->outputs[i] && wants_new)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': output '%s' is both given (outputs[%d] "
                       "is not NULL, perhaps an earlier launch's) and asked for "
                       "(output_shapes[%d]): set outputs[%d] = NULL for a new array, or "
                       "output_shapes[%d] = NULL to write into the given one", k->name, name, i,
                       i, i, i);
    if (c->outputs[i]) {
      zmlx_array *o = c->outputs[i];
      if (o->buffer->device != dev)
        return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': output '%s' is on another device",
                         k->name, name);
      if (!zmlx_array_is_contiguous(o))
        return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "kernel '%s': output '%s' must be contiguous",
                         k->name, name);
      continue;
    }
    if (!c->output_ndims || !wants_new || !c->output_dtypes)
      return zmlxi_fail(ZMLX_ERR_NULL_ARG, "kernel '%s': output '%s' is not given, and "
                       "output_ndims / output_shapes / output_dtypes are missing", k->name, name);
    zmlx_status st = zmlxi_array_alloc(dev, s, c->output_dtypes[i], c->output_ndims[i],
                                      c->output_shapes[i], &c->outputs[i]);
    if (st != ZMLX_OK) return zmlxi_fail_context(st, "kernel '%s': output '%s'", k->name, name);
    owned[i] = 1;
  }
  if (k->atomic_outputs)
    for (int i = 0; i < k->n_outputs; i++) {
      zmlx_dtype dt = c->outputs[i]->dtype;
      if (dt != ZMLX_F32 && dt != ZMLX_I32 && dt != ZMLX_U32)
        return zmlxi_fail(ZMLX_ERR_DTYPE, "kernel '%s': atomic output '%s' must be f32, i32 or u32, "
                         "not %s", k->name, k->names[k->n_inputs + i], zmlx_dtype_name(dt));
    }
  return ZMLX_OK;
}

/* Inputs as launched: dense copies of strided ones when asked for. */
static zmlx_status prepare_inputs(const zmlx_kernel *k, zmlx_kernel_call *c, zmlx_array **in) {
  for (int i = 0; i < k->n_inputs; i++) {
    if (k->ensure_row_contiguous && !zmlx_array_is_contiguous(c->inputs[i])) {
      ZMLX_CHECK(zmlx_array_contiguous(c->inputs[i], &in[i]));
    }
  }
  return ZMLX_OK;
}

typedef union scalar_value {
  float f32;
  double f64;
  int32_t i32;
  uint32_t u32;
  int64_t i64;
} scalar_value;

static size_t convert_scalar(zmlx_dtype dt, double v, scalar_value *out) {
  switch (dt) {
    case ZMLX_F64: out->f64 = v; return 8;
    case ZMLX_I32: out->i32 = (int32_t)v; return 4;
    case ZMLX_U32: out->u32 = (uint32_t)v; return 4;
    case ZMLX_I64: out->i64 = (int64_t)v; return 8;
    default: out->f32 = (float)v; return 4;
  }
}

typedef struct launch_scratch {
  zmlx_launch_arg args[ZMLX_KERNEL_MAX_ARRAYS * 4 + ZMLX_KERNEL_MAX_PARAMS + 3];
  zmlx_kshape shapes[ZMLX_KERNEL_MAX_ARRAYS];
  zmlx_kstrides strides[ZMLX_KERNEL_MAX_ARRAYS];
  int32_t ndims[ZMLX_KERNEL_MAX_ARRAYS];
  scalar_value scalars[ZMLX_KERNEL_MAX_PARAMS];
  uint32_t grid[3];
  int n;
} launch_scratch;

static void push_array(launch_scratch *ls, const zmlx_kernel *k, int i, const zmlx_array *a) {
  size_t es = zmlx_dtype_size(a->dtype);
  ls->args[ls->n++] = (zmlx_launch_arg){.kind = ZMLX_ARG_BUFFER, .buffer = a->buffer->handle,
                                        .byte_offset = (size_t)a->offset * es, .elem_size = es};
  if (k->want_shape[i]) {
    for (int d = 0; d < ZMLX_MAX_DIMS; d++)
      ls->shapes[i].v[d] = d < a->ndim ? (int32_t)a->shape[d] : 1;
    ls->args[ls->n++] = (zmlx_launch_arg){.kind = ZMLX_ARG_SCALAR, .value = &ls->shapes[i],
                                          .size = sizeof ls->shapes[i]};
  }
  if (k->want_strides[i]) {
    for (int d = 0; d < ZMLX_MAX_DIMS; d++) ls->strides[i].v[d] = d < a->ndim ? a->strides[d] : 0;
    ls->args[ls->n++] = (zmlx_launch_arg){.kind = ZMLX_ARG_SCALAR, .value = &ls->strides[i],
                                          .size = sizeof ls->strides[i]};
  }
  if (k->want_ndim[i]) {
    ls->ndims[i] = a->ndim;
    ls->args[ls->n++] = (zmlx_launch_arg){.kind = ZMLX_ARG_SCALAR, .value = &ls->ndims[i],
                                          .size = sizeof ls->ndims[i]};
  }
}

static void build_args(launch_scratch *ls, const zmlx_kernel *k, zmlx_array *const *arrays,
                       const zmlx_kernel_call *c) {
  ls->n = 0;
  for (int i = 0; i < k->n_inputs + k->n_outputs; i++) push_array(ls, k, i, arrays[i]);
  for (int i = 0; i < k->n_params; i++) {
    size_t sz = convert_scalar(k->param_dtypes[i], c->params[i], &ls->scalars[i]);
    ls->args[ls->n++] = (zmlx_launch_arg){.kind = ZMLX_ARG_SCALAR, .value = &ls->scalars[i], .size = sz};
  }
  for (int d = 0; d < 3; d++) {
    ls->grid[d] = (uint32_t)c->grid[d];
    ls->args[ls->n++] = (zmlx_launch_arg){.kind = ZMLX_ARG_SCALAR, .value = &ls->grid[d], .size = 4};
  }
}

static void release_outputs_on_error(const zmlx_kernel *k, zmlx_kernel_call *c, const int *owned) {
  for (int i = 0; i < k->n_outputs; i++)
    if (owned[i]) {
      zmlx_array_release(c->outputs[i]);
      c->outputs[i] = NULL;
    }
}

/* The function's own threadgroup arrays plus the call's dynamic bytes must
 * fit the device (a driver may crash on a launch past it rather than fail). */
static zmlx_status check_threadgroup_memory(const zmlx_kernel *k, const zmlx_device *dev, void *fn,
                                            const zmlx_kernel_call *c) {
  size_t fixed = dev->ops->static_shared ? dev->ops->static_shared(dev->index, fn) : 0;
  size_t limit = dev->info.max_shared_memory;
  if (fixed > limit || c->dynamic_shared_bytes > limit - fixed)
    return zmlxi_fail(ZMLX_ERR_LAUNCH, "kernel '%s': %zu bytes of static threadgroup memory + %zu "
                     "dynamic exceed the device's %zu", k->name, fixed, c->dynamic_shared_bytes,
                     limit);
  return ZMLX_OK;
}

static zmlx_status launch_prepared(zmlx_kernel *k, zmlx_device *dev, zmlx_stream *s,
                                   zmlx_kernel_call *c, zmlx_array **arrays) {
  uint32_t blocks[3], threads[3];
  ZMLX_CHECK(check_geometry(k, dev, c, blocks, threads));
  zmlx_dtype dtypes[ZMLX_KERNEL_MAX_ARRAYS];
  for (int i = 0; i < k->n_inputs + k->n_outputs; i++) dtypes[i] = arrays[i]->dtype;
  void *fn = NULL;
  /* fn stays loaded until the launch is handed over (zmlxi_cache_use_*) */
  zmlxi_cache_use_begin();
  zmlx_status st = get_function(k, dev, dtypes, c->templates, c->n_templates, &fn);
  if (st == ZMLX_OK) st = check_threadgroup_memory(k, dev, fn, c);
  for (int i = 0; c->has_init_value && st == ZMLX_OK && i < k->n_outputs; i++)
    st = zmlxi_builtin_fill(arrays[k->n_inputs + i], c->init_value, s);
  if (st == ZMLX_OK) {
    launch_scratch ls;
    build_args(&ls, k, arrays, c);
    zmlx_graph *capture = zmlxi_capture_on(dev);
    for (int i = 0; capture && st == ZMLX_OK && i < k->n_inputs + k->n_outputs; i++)
      st = zmlxi_capture_hold(capture, arrays[i]->buffer);
    if (st == ZMLX_OK)
      st = zmlxi_launch(dev, s->handle, fn, blocks, threads, c->dynamic_shared_bytes, ls.args, ls.n);
  }
  zmlxi_cache_use_end();
  return st;
}

static zmlx_launch_observer launch_observer;
static void *launch_observer_ctx;

void zmlxi_kernel_set_launch_observer(zmlx_launch_observer fn, void *ctx) {
  launch_observer = fn;
  launch_observer_ctx = ctx;
}

zmlx_status zmlx_kernel_launch(zmlx_kernel *k, zmlx_kernel_call *c) {
  ZMLX_REQUIRE_ARG(k);
  ZMLX_REQUIRE_ARG(c);
  ZMLX_CHECK(check_call(k, c));
  zmlx_device *dev = NULL;
  ZMLX_CHECK(resolve_device(k, c, &dev));
  zmlx_stream *s = zmlxi_stream_or_default(c->stream, dev);
  int owned[ZMLX_KERNEL_MAX_ARRAYS] = {0};
  zmlx_status st = prepare_outputs(k, dev, s, c, owned);
  if (st != ZMLX_OK) {
    release_outputs_on_error(k, c, owned);
    return st;
  }
  zmlx_array *copies[ZMLX_KERNEL_MAX_ARRAYS] = {0}, *arrays[ZMLX_KERNEL_MAX_ARRAYS];
  st = prepare_inputs(k, c, copies);
  for (int i = 0; i < k->n_inputs; i++) arrays[i] = copies[i] ? copies[i] : c->inputs[i];
  for (int i = 0; i < k->n_outputs; i++) arrays[k->n_inputs + i] = c->outputs[i];
  if (st == ZMLX_OK && launch_observer) launch_observer(launch_observer_ctx, k, c);
  if (st == ZMLX_OK) st = launch_prepared(k, dev, s, c, arrays);
  for (int i = 0; i < k->n_inputs; i++) zmlx_array_release(copies[i]);
  if (st != ZMLX_OK) release_outputs_on_error(k, c, owned);
  return st;
}

/* The defaults of MLX's metal_kernel in one call: outputs like input 0,
 * one thread per element of it. */
zmlx_status zmlx_kernel_apply(zmlx_kernel *k, zmlx_array *const *inputs, const double *params,
                              zmlx_array **outputs) {
  ZMLX_REQUIRE_ARG(k);
  ZMLX_REQUIRE_ARG(outputs);
  if (k->n_inputs < 1)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kernel_apply: kernel '%s' has no input to take "
                     "the output shape from: use zmlx_kernel_launch", k->name);
  ZMLX_REQUIRE_ARG(inputs);
  if (!inputs[0]) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_kernel_apply: inputs[0] is NULL");
  if (k->n_params > 0 && !params)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_kernel_apply: kernel '%s' takes %d params, params "
                     "is NULL", k->name, k->n_params);
  for (int i = 0; i < k->n_outputs; i++)
    if (outputs[i])
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kernel_apply: outputs[%d] is not NULL (it "
                       "makes new outputs; release an earlier one and set the slot to NULL, or "
                       "use zmlx_kernel_launch to write into it)", i);
  const zmlx_array *x = inputs[0];
  int ndims[ZMLX_KERNEL_MAX_ARRAYS];
  const int64_t *shapes[ZMLX_KERNEL_MAX_ARRAYS];
  zmlx_dtype dtypes[ZMLX_KERNEL_MAX_ARRAYS];
  for (int i = 0; i < k->n_outputs; i++) {
    ndims[i] = x->ndim;
    shapes[i] = x->shape;
    dtypes[i] = x->dtype;
  }
  if (x->size == 0) { /* nothing to run: empty outputs */
    for (int i = 0; i < k->n_outputs; i++) {
      zmlx_status st = zmlx_array_zeros(x->buffer->device, x->dtype, x->ndim, x->shape, &outputs[i]);
      if (st != ZMLX_OK) {
        for (int j = 0; j < i; j++) {
          zmlx_array_release(outputs[j]);
          outputs[j] = NULL;
        }
        return st;
      }
    }
    return ZMLX_OK;
  }
  int64_t n = x->size;
  int tg = ZMLX_KERNEL_APPLY_THREADS;
  zmlx_device_info info;
  if (zmlx_device_get_info(x->buffer->device, &info) == ZMLX_OK &&
      info.max_threads_per_threadgroup < tg)
    tg = info.max_threads_per_threadgroup;
  zmlx_kernel_call c = {.n_inputs = k->n_inputs, .n_outputs = k->n_outputs, .inputs = inputs,
                        .outputs = outputs, .output_ndims = ndims, .output_shapes = shapes,
                        .output_dtypes = dtypes, .grid = {n, 1, 1}, .threadgroup = {tg, 1, 1},
                        .params = params};
  return zmlx_kernel_launch(k, &c);
}

/* ------------------------------------------------------------------ source */

zmlx_status zmlx_kernel_source(zmlx_kernel *k, zmlx_backend backend, const zmlx_kernel_call *c,
                               const zmlx_dtype *input_dtypes, char **out) {
  ZMLX_REQUIRE_ARG(k);
  ZMLX_REQUIRE_ARG(out);
  const zmlx_dialect *d = zmlxi_dialect_for(backend);
  if (!d)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kernel_source: backend must be cuda, opencl or "
                     "metal, not %s", zmlx_backend_name(backend));
  zmlx_dtype dtypes[ZMLX_KERNEL_MAX_ARRAYS];
  for (int i = 0; i < k->n_inputs; i++) {
    if (c && c->inputs && c->inputs[i]) dtypes[i] = c->inputs[i]->dtype;
    else if (input_dtypes) dtypes[i] = input_dtypes[i];
    else return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_kernel_source: no dtype for input '%s'",
                          k->names[i]);
  }
  for (int i = 0; i < k->n_outputs; i++) {
    if (c && c->outputs && c->outputs[i]) dtypes[k->n_inputs + i] = c->outputs[i]->dtype;
    else if (c && c->output_dtypes) dtypes[k->n_inputs + i] = c->output_dtypes[i];
    else return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_kernel_source: no dtype for output '%s'",
                          k->names[k->n_inputs + i]);
  }
  const zmlx_template_arg *t = c ? c->templates : NULL;
  int nt = c ? c->n_templates : 0;
  ZMLX_CHECK(check_templates(k, t, nt));
  return zmlxi_kernel_assemble(k, d, dtypes, t, nt, wants_guard(k), out, NULL);
}

void zmlxi_kernel_call_grid_1d(zmlx_kernel_call *c, int64_t n) {
  const int64_t row = (int64_t)1 << 30;
  c->grid[0] = n < row ? (n > 0 ? n : 1) : row;
  c->grid[1] = n > row ? (n + row - 1) / row : 1;
  c->grid[2] = 1;
  c->threadgroup[0] = 256;
  c->threadgroup[1] = c->threadgroup[2] = 1;
}
