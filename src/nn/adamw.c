/* Fused multi-tensor AdamW (issue 12). One kernel (kernels/adamw_step.zk)
 * updates up to 16 tensors per launch, each element read and written once;
 * clipping by the global gradient norm is two more launches
 * (adamw_norm.zk: per-group partial sums of squares, adamw_clip.zk: their
 * sum, the norm and the factor), so the host never waits for the device.
 * zmlx_adamw_step is the functional form (state passed in, as PyTorch's
 * _fused_adamw_); zmlx_adamw is the object that holds the state. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernel/kernel.h"
#include "kernel/kernel_set.h"
#include "runtime/internal.h"

extern const char zmlxi_res_adamw_step_zk[];
extern const char zmlxi_res_adamw_norm_zk[];
extern const char zmlxi_res_adamw_clip_zk[];

#define SLOTS ZMLX_ADAMW_TENSORS_PER_LAUNCH
#define GROUP 256 /* threads per group of the norm kernels (their trees assume it) */

/* "x0, x1, ..., x5" with a suffix after each name: 6 tensors a launch,
 * as a kernel takes at most 32 arrays (5 per tensor, and the clip factor) */
#define LIST6(x, sfx) x "0" sfx ", " x "1" sfx ", " x "2" sfx ", " x "3" sfx ", " x "4" sfx ", " x "5" sfx

enum { K_STEP, K_NORM, K_CLIP };
static const zmlx_kernel_spec SPECS[] = {
    [K_STEP] = ZMLX_KSPEC("zmlx_adamw_step", zmlxi_res_adamw_step_zk, LIST6("g", "") ", clip",
                          LIST6("p", "") ", " LIST6("m", "") ", " LIST6("v", "") ", "
                                                                 LIST6("w", ""),
                          LIST6("end", ":i64") ", decay:f32, beta1:f32, beta2:f32, omb1:f32, "
                                                "omb2:f32, eps:f32, step_size:f32, inv_sqrt_bc2:f32",
                          .dense_inputs = 1),
    [K_NORM] = ZMLX_KSPEC("zmlx_adamw_norm", zmlxi_res_adamw_norm_zk, LIST6("g", ""), "partial",
                          LIST6("len", ":i64") ", base:i64", .dense_inputs = 1),
    [K_CLIP] = ZMLX_KSPEC("zmlx_adamw_clip", zmlxi_res_adamw_clip_zk, "partial", "clip",
                          "n:i64, max_norm:f32"),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("adamw", SPECS);

typedef struct adamw_hyper {
  double beta1, beta2, eps, wd, max_norm;
} adamw_hyper;

/* ---------------------------------------------------------- validation */

static zmlx_status resolve_opts(const zmlx_adamw_opts *opts, const char *fn, adamw_hyper *h,
                                int *master_weights) {
  zmlx_adamw_opts o = {0};
  if (opts) {
    if (opts->struct_size != 0 && opts->struct_size != sizeof o)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: opts->struct_size is %zu, this library's "
                       "zmlx_adamw_opts has %zu bytes (built against another zmlx.h?)", fn,
                       opts->struct_size, sizeof o);
    o = *opts;
  }
  if (o.beta1 == 0 && o.beta2 == 0) o.beta1 = 0.9, o.beta2 = 0.999;
  if (o.eps == 0) o.eps = 1e-8;
  if (!(o.beta1 >= 0 && o.beta1 < 1) || !(o.beta2 >= 0 && o.beta2 < 1))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: betas (%g, %g) must lie in [0, 1)", fn, o.beta1,
                     o.beta2);
  if (!(o.eps > 0) || !isfinite(o.eps) || !(o.weight_decay >= 0) || !isfinite(o.weight_decay) ||
      !(o.max_grad_norm >= 0) || !isfinite(o.max_grad_norm))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: eps %g must be > 0, weight_decay %g and "
                     "max_grad_norm %g finite and >= 0", fn, o.eps, o.weight_decay,
                     o.max_grad_norm);
  *h = (adamw_hyper){o.beta1, o.beta2, o.eps, o.weight_decay, o.max_grad_norm};
  if (master_weights) *master_weights = o.master_weights != 0;
  return ZMLX_OK;
}

static int same_shape(const zmlx_array *a, const zmlx_array *b) {
  return a->ndim == b->ndim && memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0;
}

/* list[i] exists, has p's shape and device, and (state) is dense f32. */
static zmlx_status check_companion(const char *list, int i, const zmlx_array *a,
                                   const zmlx_array *p, int state) {
  char sa[96], sp[96];
  if (!a) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_adamw_step: %s[%d] is NULL", list, i);
  if (!same_shape(a, p))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_adamw_step: %s[%d] has shape %s, params[%d] %s", list,
                     i, zmlxi_shape_str(sa, sizeof sa, a->ndim, a->shape), i,
                     zmlxi_shape_str(sp, sizeof sp, p->ndim, p->shape));
  if (a->buffer->device != p->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_step: %s[%d] and params[%d] live on "
                     "different devices", list, i, i);
  if (state && a->dtype != ZMLX_F32)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_adamw_step: %s[%d] has dtype %s; optimizer state is "
                     "f32", list, i, zmlx_dtype_name(a->dtype));
  if (!state && !zmlxi_dtype_is_f32_f16_bf16(a->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_adamw_step: %s[%d] has dtype %s; f32, f16 or bf16",
                     list, i, zmlx_dtype_name(a->dtype));
  if (state && !zmlx_array_is_contiguous(a))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_step: %s[%d] is a strided view; state "
                     "is updated in place and must be dense", list, i);
  return ZMLX_OK;
}

/* Whether dense arrays a and b share memory (one buffer, overlapping
 * element ranges): the step reads and writes them in place, so params and
 * their state must not alias (views of one buffer side by side are fine). */
static int overlap(const zmlx_array *a, const zmlx_array *b) {
  if (!a || !b || a->buffer != b->buffer) return 0;
  return a->offset < b->offset + b->size && b->offset < a->offset + a->size;
}

static zmlx_status check_aliasing(int i, zmlx_array *const *lists[5]) {
  static const char *names[5] = {"params", "grads", "exp_avg", "exp_avg_sq", "master"};
  for (int x = 0; x < 5; x++)
    for (int y = x + 1; y < 5; y++)
      if (lists[x] && lists[y] && overlap(lists[x][i], lists[y][i]))
        return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_step: %s[%d] and %s[%d] share memory; "
                         "each is read and written in place", names[x], i, names[y], i);
  return ZMLX_OK;
}

static zmlx_status check_lists(int n, zmlx_array *const *params, zmlx_array *const *grads,
                               zmlx_array *const *m, zmlx_array *const *v,
                               zmlx_array *const *master) {
  if (n < 0) return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_step: n is %d", n);
  if (n == 0) return ZMLX_OK;
  if (!params || !grads || !m || !v)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_adamw_step: params, grads, exp_avg and "
                     "exp_avg_sq must each be a list of %d arrays", n);
  for (int i = 0; i < n; i++) {
    const zmlx_array *p = params[i];
    if (!p) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_adamw_step: params[%d] is NULL", i);
    if (!zmlxi_dtype_is_f32_f16_bf16(p->dtype))
      return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_adamw_step: params[%d] has dtype %s; f32, f16 or "
                       "bf16", i, zmlx_dtype_name(p->dtype));
    if (!zmlx_array_is_contiguous(p))
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_step: params[%d] is a strided view; "
                       "params are updated in place and must be dense", i);
    if (p->buffer->device != params[0]->buffer->device)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_step: params[%d] and params[0] live "
                       "on different devices", i);
    ZMLX_CHECK(check_companion("grads", i, grads[i], p, 0));
    ZMLX_CHECK(check_companion("exp_avg", i, m[i], p, 1));
    ZMLX_CHECK(check_companion("exp_avg_sq", i, v[i], p, 1));
    if (master) ZMLX_CHECK(check_companion("master", i, master[i], p, 1));
  }
  zmlx_array *const *lists[5] = {params, grads, m, v, master};
  for (int i = 0; i < n; i++) ZMLX_CHECK(check_aliasing(i, lists));
  return ZMLX_OK;
}

/* ---------------------------------------------------------- launches */

/* Threadgroups of the norm kernel for `elems` gradient elements: about 16
 * elements a thread, at most 512 groups a launch. */
static int64_t norm_groups(int64_t elems) {
  int64_t g = (elems + GROUP * 16 - 1) / (GROUP * 16);
  return g < 1 ? 1 : g > 512 ? 512 : g;
}

static zmlx_status launch_norm(zmlx_array *const *grads, int count, int64_t base, int64_t groups,
                               zmlx_array *partial) {
  zmlx_kernel *k;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_NORM, &k));
  zmlx_array *in[SLOTS];
  double p[SLOTS + 1];
  for (int j = 0; j < SLOTS; j++) {
    in[j] = grads[j < count ? j : 0];
    p[j] = j < count ? (double)grads[j]->size : 0;
  }
  p[SLOTS] = (double)base;
  zmlx_kernel_call call = {.n_inputs = SLOTS, .n_outputs = 1, .inputs = in, .outputs = &partial,
                           .grid = {groups * GROUP, 1, 1}, .threadgroup = {GROUP, 1, 1},
                           .params = p, .device = partial->buffer->device};
  return zmlx_kernel_launch(k, &call);
}

/* clip[0] = the norm of every gradient, clip[1] = the clipping factor. */
static zmlx_status global_norm(int n, zmlx_array *const *grads, double max_norm, zmlx_device *dev,
                               zmlx_array **clip) {
  int64_t total_groups = 0;
  for (int c = 0; c < n; c += SLOTS) {
    int64_t elems = 0;
    for (int j = c; j < n && j < c + SLOTS; j++) elems += grads[j]->size;
    total_groups += norm_groups(elems);
  }
  zmlx_array *partial = NULL;
  int64_t two = 2;
  zmlx_status st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 1, &total_groups, &partial);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 1, &two, clip);
  int64_t base = 0;
  for (int c = 0; st == ZMLX_OK && c < n; c += SLOTS) {
    int count = n - c < SLOTS ? n - c : SLOTS;
    int64_t elems = 0;
    for (int j = 0; j < count; j++) elems += grads[c + j]->size;
    st = launch_norm(grads + c, count, base, norm_groups(elems), partial);
    base += norm_groups(elems);
  }
  if (st == ZMLX_OK) {
    zmlx_kernel *k;
    st = zmlxi_kernel_set_get(&KERNELS, K_CLIP, &k);
    double p[2] = {(double)total_groups, max_norm};
    zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &partial, .outputs = clip,
                             .grid = {GROUP, 1, 1}, .threadgroup = {GROUP, 1, 1}, .params = p,
                             .device = dev};
    if (st == ZMLX_OK) st = zmlx_kernel_launch(k, &call);
  }
  zmlx_array_release(partial);
  if (st != ZMLX_OK) {
    zmlx_array_release(*clip);
    *clip = NULL;
  }
  return st;
}

/* The step kernel over tensors [c, c + count) of the lists. */
static zmlx_status launch_step(const adamw_hyper *h, double lr, int64_t step, int count,
                               zmlx_array *const *params, zmlx_array *const *grads,
                               zmlx_array *const *m, zmlx_array *const *v,
                               zmlx_array *const *master, zmlx_array *clip) {
  zmlx_kernel *k;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_STEP, &k));
  zmlx_array *in[SLOTS + 1], *out[4 * SLOTS];
  double p[SLOTS + 8];
  int64_t end = 0;
  for (int j = 0; j < SLOTS; j++) {
    int s = j < count ? j : 0; /* unused slots repeat tensor 0 and are never reached */
    in[j] = grads[s];
    out[j] = params[s];
    out[SLOTS + j] = m[s];
    out[2 * SLOTS + j] = v[s];
    out[3 * SLOTS + j] = master ? master[s] : params[s];
    if (j < count) end += params[j]->size;
    p[j] = (double)end;
  }
  in[SLOTS] = clip ? clip : params[0];
  const double bc1 = 1.0 - pow(h->beta1, (double)step), bc2 = 1.0 - pow(h->beta2, (double)step);
  /* each coefficient from f64 and rounded once: 1 - beta2 taken in f32
   * from a rounded beta2 would be off by up to 1000 ulp */
  p[SLOTS + 0] = 1.0 - lr * h->wd;
  p[SLOTS + 1] = h->beta1;
  p[SLOTS + 2] = h->beta2;
  p[SLOTS + 3] = 1.0 - h->beta1;
  p[SLOTS + 4] = 1.0 - h->beta2;
  p[SLOTS + 5] = h->eps;
  p[SLOTS + 6] = lr / bc1;
  p[SLOTS + 7] = 1.0 / sqrt(bc2);
  zmlx_template_arg t[2] = {{"CLIP", ZMLX_TEMPLATE_BOOL, ZMLX_F32, clip != NULL},
                            {"MASTER", ZMLX_TEMPLATE_BOOL, ZMLX_F32, master != NULL}};
  zmlx_kernel_call call = {.n_inputs = SLOTS + 1, .n_outputs = 4 * SLOTS, .inputs = in,
                           .outputs = out, .templates = t, .n_templates = 2, .params = p,
                           .device = params[0]->buffer->device};
  zmlxi_kernel_call_grid_1d(&call, end);
  return zmlx_kernel_launch(k, &call);
}

static zmlx_status adamw_step(const adamw_hyper *h, double lr, int64_t step, int n,
                              zmlx_array *const *params, zmlx_array *const *grads,
                              zmlx_array *const *m, zmlx_array *const *v,
                              zmlx_array *const *master, zmlx_array **grad_norm) {
  if (!isfinite(lr) || lr < 0)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_step: lr %g must be finite and >= 0", lr);
  if (step < 1)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_step: step is %lld; the count including "
                     "this step, >= 1", (long long)step);
  ZMLX_CHECK(check_lists(n, params, grads, m, v, master));
  zmlx_device *dev = NULL;
  if (n == 0) {
    if (!grad_norm) return ZMLX_OK;
    ZMLX_CHECK(zmlxi_device_resolve(NULL, &dev));
    return zmlx_array_zeros(dev, ZMLX_F32, 0, NULL, grad_norm);
  }
  dev = params[0]->buffer->device;
  zmlx_array *clip = NULL;
  zmlx_status st = ZMLX_OK;
  if (h->max_norm > 0 || grad_norm) st = global_norm(n, grads, h->max_norm, dev, &clip);
  for (int c = 0; st == ZMLX_OK && c < n; c += SLOTS) {
    int count = n - c < SLOTS ? n - c : SLOTS;
    int64_t elems = 0;
    for (int j = 0; j < count; j++) elems += params[c + j]->size;
    if (elems == 0) continue;
    st = launch_step(h, lr, step, count, params + c, grads + c, m + c, v + c,
                     master ? master + c : NULL, h->max_norm > 0 ? clip : NULL);
  }
  if (st == ZMLX_OK && grad_norm) st = zmlxi_array_make_view(clip, 0, NULL, NULL, 0, grad_norm);
  zmlx_array_release(clip);
  return st;
}

zmlx_status zmlx_adamw_step(const zmlx_adamw_opts *opts, double lr, int64_t step, int n,
                            zmlx_array *const *params, zmlx_array *const *grads,
                            zmlx_array *const *exp_avg, zmlx_array *const *exp_avg_sq,
                            zmlx_array *const *master, zmlx_array **grad_norm) {
  if (grad_norm) *grad_norm = NULL;
  adamw_hyper h;
  ZMLX_CHECK(resolve_opts(opts, "zmlx_adamw_step", &h, NULL));
  return adamw_step(&h, lr, step, n, params, grads, exp_avg, exp_avg_sq, master, grad_norm);
}

/* -------------------------------------------------------------- object */

struct zmlx_adamw {
  adamw_hyper h;
  int n;
  int64_t step;
  zmlx_array **params, **m, **v, **master; /* master NULL without master weights */
};

static void release_list(zmlx_array **list, int n) {
  if (!list) return;
  for (int i = 0; i < n; i++) zmlx_array_release(list[i]);
  free(list);
}

zmlx_status zmlx_adamw_destroy(zmlx_adamw *opt) {
  if (!opt) return ZMLX_OK;
  release_list(opt->params, opt->n);
  release_list(opt->m, opt->n);
  release_list(opt->v, opt->n);
  release_list(opt->master, opt->n);
  free(opt);
  return ZMLX_OK;
}

/* Tensor i's zeroed moments and (16-bit params with master weights) its
 * f32 master copy. */
static zmlx_status init_state(zmlx_adamw *o, int i) {
  zmlx_array *p = o->params[i];
  zmlx_device *dev = p->buffer->device;
  ZMLX_CHECK(zmlx_array_zeros(dev, ZMLX_F32, p->ndim, p->shape, &o->m[i]));
  ZMLX_CHECK(zmlx_array_zeros(dev, ZMLX_F32, p->ndim, p->shape, &o->v[i]));
  if (o->master) ZMLX_CHECK(zmlx_array_astype(p, ZMLX_F32, &o->master[i]));
  return ZMLX_OK;
}

zmlx_status zmlx_adamw_create(zmlx_array *const *params, int n, const zmlx_adamw_opts *opts,
                              zmlx_adamw **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  adamw_hyper h;
  int master_weights;
  ZMLX_CHECK(resolve_opts(opts, "zmlx_adamw_create", &h, &master_weights));
  if (n < 0 || (n > 0 && !params))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_create: %d params%s", n,
                     n > 0 ? " but the list is NULL" : "");
  for (int i = 0; i < n; i++) {
    if (!params[i]) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_adamw_create: params[%d] is NULL", i);
    if (!zmlxi_dtype_is_f32_f16_bf16(params[i]->dtype) || !zmlx_array_is_contiguous(params[i]))
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_create: params[%d] (%s) must be a dense "
                       "f32, f16 or bf16 array", i, zmlx_dtype_name(params[i]->dtype));
  }
  int any16 = 0;
  for (int i = 0; i < n; i++) any16 |= params[i]->dtype != ZMLX_F32;
  zmlx_adamw *o = calloc(1, sizeof *o);
  size_t bytes = sizeof(zmlx_array *) * (size_t)(n > 0 ? n : 1);
  if (o) {
    o->params = calloc(1, bytes), o->m = calloc(1, bytes), o->v = calloc(1, bytes);
    if (master_weights && any16) o->master = calloc(1, bytes);
  }
  if (!o || !o->params || !o->m || !o->v || (master_weights && any16 && !o->master)) {
    zmlx_adamw_destroy(o);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_adamw_create: out of host memory");
  }
  o->h = h;
  o->n = n;
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < n && st == ZMLX_OK; i++) {
    o->params[i] = params[i];
    zmlx_array_retain(params[i]);
    st = init_state(o, i);
  }
  if (st != ZMLX_OK) {
    zmlx_adamw_destroy(o);
    return st;
  }
  *out = o;
  return ZMLX_OK;
}

zmlx_status zmlx_adamw_update(zmlx_adamw *opt, zmlx_array *const *grads, int n, double lr,
                              zmlx_array **grad_norm) {
  if (grad_norm) *grad_norm = NULL;
  ZMLX_REQUIRE_ARG(opt);
  if (n != opt->n)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_update: %d gradients for %d params", n,
                     opt->n);
  ZMLX_CHECK(adamw_step(&opt->h, lr, opt->step + 1, n, opt->params, grads, opt->m, opt->v,
                        opt->master, grad_norm));
  opt->step++;
  return ZMLX_OK;
}

zmlx_status zmlx_adamw_state(const zmlx_adamw *opt, int i, zmlx_array **exp_avg,
                             zmlx_array **exp_avg_sq, zmlx_array **master, int64_t *step) {
  ZMLX_REQUIRE_ARG(opt);
  if (i < 0 || i >= opt->n)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_adamw_state: tensor %d of %d", i, opt->n);
  zmlx_array *src[3] = {opt->m[i], opt->v[i], opt->master ? opt->master[i] : NULL};
  zmlx_array **dst[3] = {exp_avg, exp_avg_sq, master};
  for (int j = 0; j < 3; j++) {
    if (!dst[j]) continue;
    *dst[j] = src[j];
    if (src[j]) zmlx_array_retain(src[j]);
  }
  if (step) *step = opt->step;
  return ZMLX_OK;
}
