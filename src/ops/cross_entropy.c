/* Softmax cross-entropy over the last dim (issue 5): ignore_index, label
 * smoothing, mean / sum reduction, fused forward + backward (the gradient is
 * written by the forward kernel, as Liger does), any vocabulary size
 * without materialising the probabilities. Kernel:
 * src/ops/kernels/cross_entropy.zk. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "gen/patterns.h"
#include "ops/catalog.h"
#include "ops/check_util.h"
#include "runtime/internal.h"

extern const char zmlx_res_cross_entropy_zk[];

extern const char zmlx_res_ce_count_zk[];

static zmlx_kernel *k_ce, *k_count;
static zmlx_status k_status = ZMLX_OK;
static char k_error[1024];
static pthread_once_t k_once = PTHREAD_ONCE_INIT;

static void k_create(void) {
  static const char *const in[] = {"x", "t", "count"}, *const out[] = {"loss", "grad"};
  static const char *const par[] = {"rows", "cols", "ignore_index", "eps"};
  static const zmlx_dtype pdt[] = {ZMLX_I64, ZMLX_I64, ZMLX_I64, ZMLX_F32};
  static const char *const cin[] = {"t"}, *const cout[] = {"count"};
  static const char *const cpar[] = {"rows", "ignore_index"};
  static const zmlx_dtype cpdt[] = {ZMLX_I64, ZMLX_I64};
  k_status = zmlx_opck_vec_kernel_from_zk("zmlx_cross_entropy", zmlx_res_cross_entropy_zk, in, 3, out,
                                      2, par, pdt, 4, &k_ce);
  if (k_status == ZMLX_OK)
    k_status = zmlx_opck_kernel_from_zk("zmlx_ce_count", zmlx_res_ce_count_zk, cin, 1, cout, 1,
                                        cpar, cpdt, 2, &k_count);
  if (k_status != ZMLX_OK) snprintf(k_error, sizeof k_error, "%s", zmlx_last_error());
}

static const zmlx_cross_entropy_opts DEFAULT_OPTS = {-100, 0.0, ZMLX_CE_MEAN, 0};

static zmlx_status ce_check_targets(zmlx_array *t, const zmlx_cross_entropy_opts *o, int64_t V);

/* Checks shapes, dtypes and options; with o->check_targets also the targets'
 * range, on the host. */
static zmlx_status ce_validate(zmlx_array *x, zmlx_array *t, const zmlx_cross_entropy_opts *o) {
  const char *op = "cross_entropy";
  if (x->dtype != ZMLX_F32 && x->dtype != ZMLX_F16 && x->dtype != ZMLX_BF16)
    return zmlx_fail(ZMLX_ERR_DTYPE, "%s: logits have dtype %s; f32, f16 or bf16 is needed", op,
                     zmlx_dtype_name(x->dtype));
  if (t->dtype != ZMLX_I32 && t->dtype != ZMLX_I64)
    return zmlx_fail(ZMLX_ERR_DTYPE, "%s: targets have dtype %s; i32 or i64 class indices are "
                     "needed", op, zmlx_dtype_name(t->dtype));
  if (x->ndim < 1)
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: logits are a scalar; [..., vocab] is needed", op);
  int shape_ok = t->ndim == x->ndim - 1;
  for (int i = 0; shape_ok && i < t->ndim; i++) shape_ok = t->shape[i] == x->shape[i];
  if (!shape_ok) {
    char xs[96], ts[96];
    zmlx_opck_shape_str(xs, sizeof xs, x->ndim, x->shape, NULL);
    zmlx_opck_shape_str(ts, sizeof ts, t->ndim, t->shape, NULL);
    return zmlx_fail(ZMLX_ERR_SHAPE, "%s: targets shape %s must be the logits shape %s without "
                     "its last axis", op, ts, xs);
  }
  const int64_t V = x->shape[x->ndim - 1];
  if (V == 0) return zmlx_fail(ZMLX_ERR_SHAPE, "%s: the vocabulary (last) axis is 0", op);
  if (t->buffer->device != x->buffer->device)
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: logits and targets are on different devices", op);
  if (!(o->label_smoothing >= 0.0 && o->label_smoothing <= 1.0))
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: label_smoothing %g is outside [0, 1]", op,
                     o->label_smoothing);
  if (o->reduction != ZMLX_CE_MEAN && o->reduction != ZMLX_CE_SUM)
    return zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: unknown reduction %d (ZMLX_CE_MEAN or "
                     "ZMLX_CE_SUM)", op, (int)o->reduction);
  return o->check_targets ? ce_check_targets(t, o, V) : ZMLX_OK;
}

/* Downloads the targets (a device sync) and names the first out of range. */
static zmlx_status ce_check_targets(zmlx_array *t, const zmlx_cross_entropy_opts *o, int64_t V) {
  const char *op = "cross_entropy";
  const int64_t n = t->size;
  if (n == 0) return ZMLX_OK;
  int64_t *tv = malloc((size_t)n * sizeof *tv);
  if (!tv) return zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "%s: out of host memory", op);
  zmlx_status st;
  if (t->dtype == ZMLX_I64) {
    st = zmlx_array_to_host(t, tv, (size_t)n * sizeof *tv);
  } else {
    int32_t *t32 = (int32_t *)tv; /* fits: 4 of n*8 bytes, widened backwards below */
    st = zmlx_array_to_host(t, t32, (size_t)n * sizeof *t32);
    for (int64_t i = n - 1; st == ZMLX_OK && i >= 0; i--) tv[i] = t32[i];
  }
  for (int64_t i = 0; st == ZMLX_OK && i < n; i++) {
    if (tv[i] == o->ignore_index) continue;
    if (tv[i] < 0 || tv[i] >= V)
      st = zmlx_fail(ZMLX_ERR_INVALID_ARG, "%s: target %lld at row %lld is out of range [0, %lld) "
                     "and is not ignore_index %lld", op, (long long)tv[i], (long long)i,
                     (long long)V, (long long)o->ignore_index);
  }
  free(tv);
  return st;
}

/* The mean's divisor, counted on the device (one threadgroup). */
static zmlx_status ce_count(zmlx_array *t, const zmlx_cross_entropy_opts *o, zmlx_array *count) {
  double params[2] = {(double)t->size, (double)o->ignore_index};
  zmlx_array *outs[1] = {count};
  zmlx_kernel_call call = {.n_inputs = 1, .n_outputs = 1, .inputs = &t, .outputs = outs,
                           .params = params, .device = t->buffer->device,
                           .grid = {256, 1, 1}, .threadgroup = {256, 1, 1}};
  return zmlx_kernel_launch(k_count, &call);
}

/* The fused kernel: loss rows (f32, scaled) and optionally the gradient. */
static zmlx_status ce_launch(zmlx_array *x, zmlx_array *t, const zmlx_cross_entropy_opts *o,
                             zmlx_array *loss_rows, zmlx_array *grad) {
  pthread_once(&k_once, k_create);
  if (k_status != ZMLX_OK) return zmlx_fail(k_status, "cross_entropy kernel: %s", k_error);
  const int64_t cols = x->shape[x->ndim - 1];
  const int64_t rows = x->size / cols;
  if (rows == 0) return ZMLX_OK;
  const int mean = o->reduction == ZMLX_CE_MEAN;
  zmlx_array *dummy = NULL, *count = NULL;
  int64_t one = 1;
  zmlx_status st = ZMLX_OK;
  if (!grad) st = zmlx_array_alloc(x->buffer->device, NULL, x->dtype, 1, &one, &dummy);
  if (st == ZMLX_OK && mean)
    st = zmlx_array_alloc(x->buffer->device, NULL, ZMLX_I32, 1, &one, &count);
  if (st == ZMLX_OK && mean) st = ce_count(t, o, count);
  if (st != ZMLX_OK) {
    zmlx_array_release(dummy);
    zmlx_array_release(count);
    return st;
  }
  zmlx_array *in[3] = {x, t, mean ? count : t}; /* without MEAN, count is not read */
  zmlx_array *outs[2] = {loss_rows, grad ? grad : dummy};
  double params[4] = {(double)rows, (double)cols, (double)o->ignore_index, o->label_smoothing};
  /* 16-byte accesses when every row starts 16-byte aligned (a strided x is
   * made dense, at offset 0, by the kernel object) */
  const size_t es = zmlx_dtype_size(x->dtype);
  const int width = (int)(16 / es);
  const int aligned = (!zmlx_array_is_contiguous(x) || ((size_t)x->offset * es) % 16 == 0) &&
                      (!grad || ((size_t)grad->offset * es) % 16 == 0);
  const int vec = cols % width == 0 && aligned ? width : 0;
  const int xdt = zmlx_ops_xdt(x->dtype);
  int tg = 0, nv = 0;
  if (vec) zmlx_ops_chunk_geometry(x->buffer->device, cols / vec, 8, &tg, &nv);
  const int native = zmlx_ops_native_simd(x->buffer->device);
  zmlx_template_arg tmpl[7] = {{"WG", ZMLX_TEMPLATE_BOOL, ZMLX_F32, grad ? 1 : 0},
                               {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                               {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, xdt},
                               {"MEAN", ZMLX_TEMPLATE_BOOL, ZMLX_F32, mean},
                               {"NV", ZMLX_TEMPLATE_INT, ZMLX_F32, nv},
                               {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, native},
                               {"TILE", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlx_ops_stream_tile()}};
  zmlx_kernel_call call = {.n_inputs = 3, .n_outputs = 2, .inputs = in, .outputs = outs,
                           .templates = tmpl, .n_templates = 7, .params = params,
                           .device = x->buffer->device};
  zmlx_opck_row_geometry(x->buffer->device, rows, vec ? cols / vec : cols, &call);
  if (nv) zmlx_ops_use_chunk_geometry(&call, tg, nv);
  else if (vec) zmlx_ops_use_stream_geometry(&call, grad != NULL);
  st = zmlx_kernel_launch(k_ce, &call);
  zmlx_array_release(dummy);
  zmlx_array_release(count);
  return st;
}

/* ------------------------------------------------------------------ autograd */

typedef struct ce_ctx {
  zmlx_array *grad; /* d loss / d logits for a cotangent of 1 */
} ce_ctx;

static void ce_ctx_free(void *p) {
  ce_ctx *c = p;
  if (c) zmlx_array_release(c->grad);
  free(c);
}

static zmlx_status ce_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                          zmlx_array **grads) {
  const ce_ctx *c = n->ctx;
  if (!need[0]) return ZMLX_OK;
  return zmlx_mul(c->grad, cot[0], &grads[0]);
}

static zmlx_status ce_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out_tan) {
  const ce_ctx *c = n->ctx;
  if (!tan[0]) return ZMLX_OK;
  zmlx_array *p = NULL;
  ZMLX_CHECK(zmlx_mul(c->grad, tan[0], &p));
  zmlx_array *s = NULL;
  zmlx_status st = zmlx_sum(p, NULL, 0, 0, &s);
  zmlx_array_release(p);
  if (st == ZMLX_OK) st = zmlx_ad_cast(s, ZMLX_F32, &out_tan[0]);
  zmlx_array_release(s);
  return st;
}

static const zmlx_ad_rule CE_RULE = {"cross_entropy", ce_vjp, ce_jvp, ce_ctx_free};

/* Everything but recording: loss (f32 scalar) and, when grad_out, the
 * gradient in the logits' dtype. `grad_into`: a preallocated gradient
 * (the check's poisoned array) instead of a new one. */
static zmlx_status ce_compute(zmlx_array *x, zmlx_array *t, const zmlx_cross_entropy_opts *o,
                             zmlx_array *loss_rows_into, zmlx_array **loss, zmlx_array **grad_out,
                             zmlx_array *grad_into) {
  ZMLX_CHECK(ce_validate(x, t, o));
  zmlx_array *rows = loss_rows_into, *grad = grad_into;
  zmlx_status st = ZMLX_OK;
  if (!rows) st = zmlx_array_alloc(x->buffer->device, NULL, ZMLX_F32, t->ndim, t->shape, &rows);
  else zmlx_array_retain(rows);
  if (st == ZMLX_OK && grad_out && !grad)
    st = zmlx_array_alloc(x->buffer->device, NULL, x->dtype, x->ndim, x->shape, &grad);
  else if (grad)
    zmlx_array_retain(grad);
  if (st == ZMLX_OK) st = ce_launch(x, t, o, rows, grad_out ? grad : NULL);
  if (st == ZMLX_OK) {
    if (rows->size == 0) st = zmlx_array_zeros(x->buffer->device, ZMLX_F32, 0, NULL, loss);
    else st = zmlx_sum(rows, NULL, 0, 0, loss);
  }
  zmlx_array_release(rows);
  if (st == ZMLX_OK && grad_out) {
    *grad_out = grad;
    grad = NULL;
  }
  zmlx_array_release(grad);
  return st;
}

zmlx_status zmlx_cross_entropy(zmlx_array *logits, zmlx_array *targets,
                               const zmlx_cross_entropy_opts *opts, zmlx_array **loss,
                               zmlx_array **grad_logits) {
  ZMLX_REQUIRE_ARG(loss);
  *loss = NULL;
  if (grad_logits) *grad_logits = NULL;
  ZMLX_REQUIRE_ARG(logits);
  ZMLX_REQUIRE_ARG(targets);
  const zmlx_cross_entropy_opts *o = opts ? opts : &DEFAULT_OPTS;
  zmlx_array *in[2] = {logits, targets};
  const int record = zmlx_ad_should_record(in, 2);
  zmlx_array *l = NULL, *g = NULL;
  zmlx_status st;
  /* the forward is opaque to autograd: its internal sum is not recorded */
  zmlx_ad_pause();
  st = ce_compute(logits, targets, o, NULL, &l, (record || grad_logits) ? &g : NULL, NULL);
  zmlx_ad_resume();
  if (st != ZMLX_OK) return st;
  if (record) {
    ce_ctx *c = malloc(sizeof *c);
    if (!c) {
      st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "cross_entropy: out of host memory");
    } else {
      zmlx_array_retain(g);
      c->grad = g;
      st = zmlx_ad_record(&CE_RULE, c, in, 2, &l, 1, 0);
    }
  }
  if (st != ZMLX_OK) {
    zmlx_array_release(l);
    zmlx_array_release(g);
    return st;
  }
  *loss = l;
  if (grad_logits) *grad_logits = g;
  else zmlx_array_release(g);
  return ZMLX_OK;
}

/* ------------------------------------------------------------------- checks */

/* f64 reference: loss and gradient (cotangent 1). */
static double ce_ref(const double *x, const int64_t *t, int64_t rows, int64_t V,
                     const zmlx_cross_entropy_opts *o, double *grad) {
  int64_t nv = 0;
  for (int64_t r = 0; r < rows; r++) nv += t[r] != o->ignore_index;
  double scale = o->reduction == ZMLX_CE_MEAN ? (nv ? 1.0 / (double)nv : 0.0) : 1.0;
  double eps = o->label_smoothing, loss = 0;
  for (int64_t r = 0; r < rows; r++) {
    const double *xr = x + r * V;
    double *gr = grad + r * V;
    if (t[r] == o->ignore_index) {
      for (int64_t j = 0; j < V; j++) gr[j] = 0;
      continue;
    }
    double m = -INFINITY, s = 0, sx = 0;
    for (int64_t j = 0; j < V; j++) m = xr[j] > m ? xr[j] : m;
    for (int64_t j = 0; j < V; j++) {
      s += exp(xr[j] - m);
      sx += xr[j];
    }
    double lse = m + log(s);
    loss += scale * ((1 - eps) * (lse - xr[t[r]]) + eps * (lse - sx / (double)V));
    for (int64_t j = 0; j < V; j++)
      gr[j] = scale * (exp(xr[j] - lse) - eps / (double)V - (j == t[r] ? 1 - eps : 0));
  }
  return loss;
}

typedef struct ce_fn_data {
  zmlx_cross_entropy_opts o;
} ce_fn_data;

static zmlx_status ce_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  const ce_fn_data *d = ud;
  return zmlx_cross_entropy(in[0], in[1], &d->o, out, NULL);
}

static zmlx_status ce_case(const zmlx_check_opts *o, int64_t rows, int64_t V,
                           const zmlx_cross_entropy_opts *co, zmlx_dtype tdt, int gradcheck,
                           uint64_t *rng) {
  const char *op = "cross_entropy";
  zmlx_dtype dt = o->dtype;
  char shp[96], extra[64];
  int64_t xs[2] = {rows, V};
  snprintf(extra, sizeof extra, "%s%s ls %g %s", co->reduction == ZMLX_CE_MEAN ? "mean" : "sum",
           co->ignore_index >= -1 ? " ignore" : "", co->label_smoothing,
           tdt == ZMLX_I64 ? "i64" : "i32");
  zmlx_opck_shape_str(shp, sizeof shp, 2, xs, extra);
  const int64_t n = rows * V;
  double *xv = malloc((size_t)n * sizeof *xv), *gw = malloc((size_t)n * sizeof *gw);
  double *tv = malloc((size_t)rows * sizeof *tv);
  int64_t *ti = malloc((size_t)rows * sizeof *ti);
  double *ggot = NULL, *lgot = NULL;
  zmlx_array *x = NULL, *t = NULL, *grad = NULL, *rows_arr = NULL, *loss = NULL, *g2 = NULL;
  zmlx_status st = ZMLX_OK;
  if (!xv || !gw || !tv || !ti) {
    st = zmlx_fail(ZMLX_ERR_OUT_OF_MEMORY, "check: out of host memory");
    goto done;
  }
  for (int64_t i = 0; i < n; i++) xv[i] = zmlx_opck_round(dt, zmlx_opck_uniform(rng, -6, 6));
  for (int64_t r = 0; r < rows; r++) {
    ti[r] = (int64_t)(zmlx_opck_next(rng) % (uint64_t)V);
    /* every third row ignored when the case uses an ignore index */
    if (co->ignore_index >= -1 && r % 3 == 1) ti[r] = co->ignore_index;
    tv[r] = (double)ti[r];
  }
  double lwant = ce_ref(xv, ti, rows, V, co, gw);
  st = zmlx_opck_upload(o->device, dt, 2, xs, xv, &x);
  if (st == ZMLX_OK) st = zmlx_opck_upload(o->device, tdt, 1, &rows, tv, &t);
  if (st == ZMLX_OK) st = zmlx_array_full(o->device, dt, 2, xs, NAN, &grad);
  if (st == ZMLX_OK) st = zmlx_array_full(o->device, ZMLX_F32, 1, &rows, NAN, &rows_arr);
  if (st == ZMLX_OK) st = ce_compute(x, t, co, rows_arr, &loss, &g2, grad);
  if (st != ZMLX_OK) goto done;
  lgot = zmlx_opck_download(loss);
  ggot = zmlx_opck_download(grad);
  if (!lgot || !ggot) {
    st = zmlx_fail(ZMLX_ERR_BACKEND, "check: download failed");
    goto done;
  }
  /* the loss is computed in f32 from the stored logits: f32-level error,
   * looser for sums over many rows */
  double ltol = 1e-4;
  double le = zmlx_opck_err_rel1(lgot, &lwant, 1);
  zmlx_opck_emit(o, op, "fwd loss", dt, shp, le, ltol, le <= ltol);
  double gt = zmlx_opck_tol(dt);
  double ge = zmlx_opck_err_relmax(ggot, gw, n);
  zmlx_opck_emit(o, op, "fused grad", dt, shp, ge, gt, ge <= gt);
  if (gradcheck) {
    ce_fn_data fd = {*co};
    zmlx_array *ins[2] = {x, t};
    zmlx_grad_check_report rep;
    memset(&rep, 0, sizeof rep);
    zmlx_status gs = zmlx_check_grad(ce_fn, &fd, ins, 2, 1e-3, 1e-2, &rep);
    int pass = gs == ZMLX_OK && rep.passed;
    if (gs != ZMLX_OK) zmlx_clear_error();
    zmlx_opck_emit(o, op, "grad (finite diff)", dt, shp,
                   gs == ZMLX_OK ? rep.inputs[0].max_abs_err : INFINITY, 1e-2, pass);
  }
done:
  free(xv);
  free(gw);
  free(tv);
  free(ti);
  free(ggot);
  free(lgot);
  zmlx_array_release(x);
  zmlx_array_release(t);
  zmlx_array_release(grad);
  zmlx_array_release(g2);
  zmlx_array_release(rows_arr);
  zmlx_array_release(loss);
  return st;
}

/* Without check_targets, an out-of-range target is not a status (no sync
 * ran) but must show: the loss is NaN, and so is its gradient row. */
static void ce_unchecked_target(const zmlx_check_opts *o, zmlx_array *x, zmlx_array *t) {
  zmlx_array *loss = NULL, *g = NULL;
  double *lv = NULL, *gv = NULL;
  zmlx_status st = zmlx_cross_entropy(x, t, NULL, &loss, &g);
  if (st == ZMLX_OK) {
    lv = zmlx_opck_download(loss);
    gv = zmlx_opck_download(g);
  }
  int pass = lv && gv && isnan(lv[0]) && isnan(gv[5]) && !isnan(gv[0]);
  zmlx_opck_emit(o, "cross_entropy", "bad: unchecked target -> NaN", o->dtype, "[3, 5]",
                 pass ? 0.0 : 1.0, 0.0, pass);
  zmlx_clear_error();
  free(lv);
  free(gv);
  zmlx_array_release(loss);
  zmlx_array_release(g);
}

static void ce_bad_inputs(const zmlx_check_opts *o) {
  const char *op = "cross_entropy";
  int64_t xs[2] = {3, 5}, t3 = 3, t4 = 4;
  zmlx_array *x = NULL, *s = NULL, *xi = NULL, *t = NULL, *tbad = NULL, *tf = NULL,
             *trange = NULL, *tneg = NULL, *loss = NULL, *g = NULL;
  double tr[3] = {0, 5, 1}, tn[3] = {0, -2, 1}, tok[3] = {0, 4, 2};
  zmlx_array_zeros(o->device, o->dtype, 2, xs, &x);
  zmlx_array_full(o->device, o->dtype, 0, NULL, 1.0, &s);
  zmlx_array_zeros(o->device, ZMLX_I32, 2, xs, &xi);
  zmlx_opck_upload(o->device, ZMLX_I32, 1, &t3, tok, &t);
  zmlx_array_zeros(o->device, ZMLX_I32, 1, &t4, &tbad);
  zmlx_array_zeros(o->device, ZMLX_F32, 1, &t3, &tf);
  zmlx_opck_upload(o->device, ZMLX_I64, 1, &t3, tr, &trange);
  zmlx_opck_upload(o->device, ZMLX_I32, 1, &t3, tn, &tneg);
  zmlx_cross_entropy_opts ls = DEFAULT_OPTS, red = DEFAULT_OPTS, chk = DEFAULT_OPTS;
  chk.check_targets = 1;
  ls.label_smoothing = 1.5;
  red.reduction = (zmlx_ce_reduction)7;
  zmlx_opck_bad(o, op, "NULL logits", zmlx_cross_entropy(NULL, t, NULL, &loss, &g),
                ZMLX_ERR_NULL_ARG);
  zmlx_opck_bad(o, op, "rank-0 logits", zmlx_cross_entropy(s, t, NULL, &loss, &g),
                ZMLX_ERR_SHAPE);
  zmlx_opck_bad(o, op, "i32 logits", zmlx_cross_entropy(xi, t, NULL, &loss, &g), ZMLX_ERR_DTYPE);
  zmlx_opck_bad(o, op, "targets [4] for logits [3, 5]",
                zmlx_cross_entropy(x, tbad, NULL, &loss, &g), ZMLX_ERR_SHAPE);
  zmlx_opck_bad(o, op, "f32 targets", zmlx_cross_entropy(x, tf, NULL, &loss, &g), ZMLX_ERR_DTYPE);
  zmlx_opck_bad(o, op, "target 5 >= vocab 5 (checked)",
                zmlx_cross_entropy(x, trange, &chk, &loss, &g), ZMLX_ERR_INVALID_ARG);
  zmlx_opck_bad(o, op, "target -2 (ignore_index -100, checked)",
                zmlx_cross_entropy(x, tneg, &chk, &loss, &g), ZMLX_ERR_INVALID_ARG);
  ce_unchecked_target(o, x, trange);
  ce_unchecked_target(o, x, tneg);
  zmlx_opck_bad(o, op, "label_smoothing 1.5", zmlx_cross_entropy(x, t, &ls, &loss, &g),
                ZMLX_ERR_INVALID_ARG);
  zmlx_opck_bad(o, op, "reduction 7", zmlx_cross_entropy(x, t, &red, &loss, &g),
                ZMLX_ERR_INVALID_ARG);
  zmlx_array *arr[] = {x, s, xi, t, tbad, tf, trange, tneg, loss, g};
  for (size_t i = 0; i < sizeof arr / sizeof arr[0]; i++) zmlx_array_release(arr[i]);
}

static zmlx_status check_cross_entropy(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 991u;
  static const int64_t QV[] = {1, 7, 64, 1000, 4097};
  static const int64_t FV[] = {1, 7, 64, 1000, 4097, 32768, 128256};
  const int64_t *vs = o->quick ? QV : FV;
  int nv = o->quick ? 5 : 7;
  zmlx_cross_entropy_opts plain = {-100, 0.0, ZMLX_CE_MEAN, 1}; /* host-checked targets */
  zmlx_cross_entropy_opts smooth = {-1, 0.1, ZMLX_CE_SUM, 0};
  zmlx_cross_entropy_opts ign = {-100, 0.0, ZMLX_CE_MEAN, 0};
  ign.ignore_index = -1;
  for (int vi = 0; vi < nv; vi++) {
    int64_t rows_few = vs[vi] >= 100000 ? 3 : 5;
    ZMLX_CHECK(ce_case(o, 1, vs[vi], &plain, ZMLX_I32, 0, &rng));
    ZMLX_CHECK(ce_case(o, rows_few, vs[vi], &ign, ZMLX_I64, 0, &rng));
    ZMLX_CHECK(ce_case(o, rows_few, vs[vi], &smooth, ZMLX_I32, 0, &rng));
  }
  if (o->dtype == ZMLX_F32) {
    ZMLX_CHECK(ce_case(o, 4, 6, &ign, ZMLX_I32, 1, &rng));
    ZMLX_CHECK(ce_case(o, 4, 5, &smooth, ZMLX_I64, 1, &rng));
  }
  ce_bad_inputs(o);
  return ZMLX_OK;
}

const zmlx_catalog_op zmlx_catalog_cross_entropy_ops[] = {
    {"cross_entropy", check_cross_entropy},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct ce_bench {
  zmlx_array *x, *t;
  int with_grad;
} ce_bench;

static zmlx_status ce_bench_run(void *p) {
  ce_bench *c = p;
  zmlx_array *loss = NULL, *g = NULL;
  zmlx_status st = zmlx_cross_entropy(c->x, c->t, NULL, &loss, c->with_grad ? &g : NULL);
  zmlx_array_release(loss);
  zmlx_array_release(g);
  return st;
}

/* bf16 logits [8192, 32000] (and Llama 3's vocabulary, 128256), i64
 * targets: the forward reads the logits once; the fused forward + backward
 * also writes the gradient. */
static zmlx_status ce_bench_case(const zmlx_bench_opts *o, const char *op, int64_t rows,
                                 int64_t vocab, int with_grad) {
  int64_t shape[2] = {zmlx_bench_rows(o, rows), vocab};
  ce_bench c = {NULL, NULL, with_grad};
  zmlx_status st = zmlx_bench_random(o->device, ZMLX_BF16, 2, shape, 51, &c.x);
  zmlx_array *u = NULL;
  /* targets: uniform floats in [0, vocab) truncated to i64 */
  if (st == ZMLX_OK)
    st = zmlx_array_random_uniform(o->device, ZMLX_F32, 1, shape, 52, 0.0, (double)vocab - 1, &u);
  if (st == ZMLX_OK) st = zmlx_astype(u, ZMLX_I64, &c.t);
  zmlx_array_release(u);
  double n = (double)shape[0] * (double)vocab;
  double bytes = 2.0 * n * (with_grad ? 2 : 1) + 8.0 * (double)shape[0];
  if (st == ZMLX_OK) st = zmlx_bench_time_emit(o, op, ZMLX_BF16, 2, shape, bytes, ce_bench_run, &c);
  zmlx_array_release(c.x);
  zmlx_array_release(c.t);
  return st;
}

static zmlx_status bench_cross_entropy(const zmlx_bench_opts *o) {
  ZMLX_CHECK(ce_bench_case(o, "cross_entropy", 8192, 32000, 0));
  ZMLX_CHECK(ce_bench_case(o, "cross_entropy_fused", 8192, 32000, 1));
  return ce_bench_case(o, "cross_entropy", 8192, 128256, 0);
}

const zmlx_catalog_bench zmlx_catalog_cross_entropy_bench[] = {
    {"cross_entropy", bench_cross_entropy},
    {0},
};
