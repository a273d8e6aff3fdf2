/* `zmlx check` and `zmlx bench` cases of src/ops/cross_entropy.c: forward against
 * an f64 reference on fresh random inputs with poisoned outputs, gradients,
 * bad input, and the LLM shapes the benchmark times. Part of the check
 * library (the CLI and the tests link it; libzmlx does not). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autograd/ad.h"
#include "gen/patterns.h"
#include "runtime/internal.h"
#include "check/check_util.h"
#include "ops/cross_entropy.h"

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
                           zck_family fam, uint64_t *rng) {
  const char *op = "cross_entropy";
  zmlx_dtype dt = o->dtype;
  char shp[96], extra[64];
  int64_t xs[2] = {rows, V};
  snprintf(extra, sizeof extra, "%s%s ls %g %s%s", co->reduction == ZMLX_CE_MEAN ? "mean" : "sum",
           co->ignore_index >= -1 ? " ignore" : "", co->label_smoothing,
           tdt == ZMLX_I64 ? "i64" : "i32", zck_family_name(fam));
  zck_shape_str(shp, sizeof shp, 2, xs, extra);
  const int64_t n = rows * V;
  double *xv = malloc((size_t)n * sizeof *xv), *gw = malloc((size_t)n * sizeof *gw);
  double *tv = malloc((size_t)rows * sizeof *tv);
  int64_t *ti = malloc((size_t)rows * sizeof *ti);
  double *ggot = NULL, *lgot = NULL;
  zmlx_array *x = NULL, *t = NULL, *grad = NULL, *rows_arr = NULL, *loss = NULL, *g2 = NULL;
  zmlx_status st = ZMLX_OK;
  if (!xv || !gw || !tv || !ti) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check: out of host memory");
    goto done;
  }
  zck_fill(fam, xv, rows, V, -6, 6, dt, rng);
  for (int64_t r = 0; r < rows; r++) {
    ti[r] = (int64_t)(zck_next(rng) % (uint64_t)V);
    /* every third row ignored when the case uses an ignore index */
    if (co->ignore_index >= -1 && r % 3 == 1) ti[r] = co->ignore_index;
    tv[r] = (double)ti[r];
  }
  double lwant = ce_ref(xv, ti, rows, V, co, gw);
  st = zck_upload(o->device, dt, 2, xs, xv, &x);
  if (st == ZMLX_OK) st = zck_upload(o->device, tdt, 1, &rows, tv, &t);
  if (st == ZMLX_OK) st = zmlx_array_full(o->device, dt, 2, xs, NAN, &grad);
  if (st == ZMLX_OK) st = zmlx_array_full(o->device, ZMLX_F32, 1, &rows, NAN, &rows_arr);
  if (st == ZMLX_OK) st = zmlxi_cross_entropy_compute(x, t, co, rows_arr, &loss, &g2, grad);
  if (st != ZMLX_OK) goto done;
  zck_download(loss, &lgot);
  zck_download(grad, &ggot);
  if (!lgot || !ggot) {
    st = zmlxi_fail(ZMLX_ERR_BACKEND, "check: download failed");
    goto done;
  }
  {
    /* the loss is f32 from the stored logits: each row's is a sum of V
     * terms on logits of span 12 (up to 12 + log V per row), then the rows
     * are summed; 4 sqrt(V rows) covers both sums' 4 sqrt(V) + 4 sqrt(rows) */
    double per_row = 12 + log((double)V), le, lt;
    double scale = per_row * (co->reduction == ZMLX_CE_MEAN ? 1 : (double)rows);
    int ok = zck_within(lgot, &lwant, 1, zck_bound_of(ZCK_TOL_ROW, ZMLX_F32, scale, rows * V), &le, &lt);
    zck_emit(o, op, "fwd loss", dt, shp, le, lt, ok);
  }
  {
    /* grad = s (p - eps / V - [j = t] (1 - eps)): p carries the row sum's
     * relative error, the subtraction then cancels against the other
     * terms, of size |grad| + 2 s (eps / V + [j = t] (1 - eps)) */
    double *terms = malloc((size_t)n * sizeof *terms), ge, gt;
    if (!terms) {
      st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "check: out of host memory");
      goto done;
    }
    int64_t nv = 0;
    for (int64_t r = 0; r < rows; r++) nv += ti[r] != co->ignore_index;
    double sc = co->reduction == ZMLX_CE_MEAN ? (nv ? 1.0 / (double)nv : 0.0) : 1.0;
    double eps = co->label_smoothing;
    for (int64_t r = 0; r < rows; r++)
      for (int64_t j = 0; j < V; j++)
        terms[r * V + j] = fabs(gw[r * V + j]) +
                           2 * sc * (eps / (double)V + (j == ti[r] ? 1 - eps : 0));
    int ok = zck_within_scaled(ggot, gw, terms, n, zck_bound_sum(ZCK_TOL_ROW, dt, V), &ge, &gt);
    free(terms);
    zck_emit(o, op, "fused grad", dt, shp, ge, gt, ok);
  }
  if (gradcheck) {
    ce_fn_data fd = {*co};
    zmlx_array *ins[2] = {x, t};
    zmlx_grad_check_report rep;
    memset(&rep, 0, sizeof rep);
    zmlx_status gs = zmlx_check_grad(ce_fn, &fd, ins, 2, 1e-3, zck_fd_tol(), &rep);
    int pass = gs == ZMLX_OK && rep.passed;
    if (gs != ZMLX_OK) zmlx_clear_error();
    zck_emit(o, op, "grad (finite diff)", dt, shp,
                   gs == ZMLX_OK ? rep.inputs[0].max_abs_err : INFINITY, zck_fd_tol(), pass);
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
    zck_download(loss, &lv);
    zck_download(g, &gv);
  }
  int pass = lv && gv && isnan(lv[0]) && isnan(gv[5]) && !isnan(gv[0]);
  zck_emit(o, "cross_entropy", "bad: unchecked target -> NaN", o->dtype, "[3, 5]",
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
  zck_upload(o->device, ZMLX_I32, 1, &t3, tok, &t);
  zmlx_array_zeros(o->device, ZMLX_I32, 1, &t4, &tbad);
  zmlx_array_zeros(o->device, ZMLX_F32, 1, &t3, &tf);
  zck_upload(o->device, ZMLX_I64, 1, &t3, tr, &trange);
  zck_upload(o->device, ZMLX_I32, 1, &t3, tn, &tneg);
  zmlx_cross_entropy_opts ls = zmlxi_cross_entropy_defaults, red = zmlxi_cross_entropy_defaults, chk = zmlxi_cross_entropy_defaults;
  chk.check_targets = 1;
  ls.label_smoothing = 1.5;
  red.reduction = (zmlx_ce_reduction)7;
  zck_expect(o, op, "NULL logits", zmlx_cross_entropy(NULL, t, NULL, &loss, &g), NULL,
                ZMLX_ERR_NULL_ARG, NULL);
  zck_expect(o, op, "rank-0 logits", zmlx_cross_entropy(s, t, NULL, &loss, &g), NULL,
                ZMLX_ERR_SHAPE, NULL);
  zck_expect(o, op, "i32 logits", zmlx_cross_entropy(xi, t, NULL, &loss, &g), NULL, ZMLX_ERR_DTYPE, NULL);
  zck_expect(o, op, "targets [4] for logits [3, 5]",
             zmlx_cross_entropy(x, tbad, NULL, &loss, &g), NULL, ZMLX_ERR_SHAPE, NULL);
  zck_expect(o, op, "f32 targets", zmlx_cross_entropy(x, tf, NULL, &loss, &g), NULL, ZMLX_ERR_DTYPE, NULL);
  zck_expect(o, op, "target 5 >= vocab 5 (checked)",
                zmlx_cross_entropy(x, trange, &chk, &loss, &g), NULL, ZMLX_ERR_INVALID_ARG, NULL);
  zck_expect(o, op, "target -2 (ignore_index -100, checked)",
                zmlx_cross_entropy(x, tneg, &chk, &loss, &g), NULL, ZMLX_ERR_INVALID_ARG, NULL);
  ce_unchecked_target(o, x, trange);
  ce_unchecked_target(o, x, tneg);
  zck_expect(o, op, "label_smoothing 1.5", zmlx_cross_entropy(x, t, &ls, &loss, &g), NULL,
                ZMLX_ERR_INVALID_ARG, NULL);
  zck_expect(o, op, "reduction 7", zmlx_cross_entropy(x, t, &red, &loss, &g), NULL,
                ZMLX_ERR_INVALID_ARG, NULL);
  zmlx_array *arr[] = {x, s, xi, t, tbad, tf, trange, tneg, loss, g};
  for (size_t i = 0; i < sizeof arr / sizeof arr[0]; i++) zmlx_array_release(arr[i]);
}

static zmlx_status check_cross_entropy(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 991u;
  /* vocabularies reaching each path (`zmlx check --paths`): 1, 7 scalar;
   * 64, 1000 the row in registers; 4097 scalar streaming; 16392 16-byte
   * streaming (every dtype) */
  static const int64_t QV[] = {1, 7, 64, 1000, 4097, 16392};
  static const int64_t FV[] = {1, 7, 64, 1000, 4097, 16392, 32768, 128256};
  const int64_t *vs = o->quick ? QV : FV;
  int nv = o->quick ? (int)(sizeof QV / sizeof QV[0]) : (int)(sizeof FV / sizeof FV[0]);
  zmlx_cross_entropy_opts plain = {-100, 0.0, ZMLX_CE_MEAN, 1}; /* host-checked targets */
  zmlx_cross_entropy_opts smooth = {-1, 0.1, ZMLX_CE_SUM, 0};
  zmlx_cross_entropy_opts ign = {-100, 0.0, ZMLX_CE_MEAN, 0};
  ign.ignore_index = -1;
  for (int vi = 0; vi < nv; vi++) {
    int64_t rows_few = vs[vi] >= 100000 ? 3 : 5;
    ZMLX_CHECK(ce_case(o, 1, vs[vi], &plain, ZMLX_I32, 0, ZCK_UNIFORM, &rng));
    ZMLX_CHECK(ce_case(o, rows_few, vs[vi], &ign, ZMLX_I64, 0, ZCK_UNIFORM, &rng));
    ZMLX_CHECK(ce_case(o, rows_few, vs[vi], &smooth, ZMLX_I32, 0, ZCK_UNIFORM, &rng));
    /* logits offset by +-100..1000: the max subtraction, and a loss and a
     * gradient that must not round at the logits' magnitude */
    ZMLX_CHECK(ce_case(o, rows_few, vs[vi], &smooth, ZMLX_I32, 0, ZCK_OFFSET, &rng));
  }
  /* Small vocabularies with label smoothing, where eps / V matters most
   * (an error in it scales like 1 / V^2): 2 and 3 reach the scalar path,
   * 8 and 16 the 16-byte one. */
  static const int64_t SMALL_V[] = {2, 3, 8, 16};
  for (int vi = 0; vi < 4; vi++)
    ZMLX_CHECK(ce_case(o, 6, SMALL_V[vi], &smooth, ZMLX_I32, 0, ZCK_UNIFORM, &rng));
  if (o->dtype == ZMLX_F32) {
    ZMLX_CHECK(ce_case(o, 4, 6, &ign, ZMLX_I32, 1, ZCK_UNIFORM, &rng));
    ZMLX_CHECK(ce_case(o, 4, 5, &smooth, ZMLX_I64, 1, ZCK_UNIFORM, &rng));
  }
  ce_bad_inputs(o);
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_cross_entropy_ops[] = {
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
  int64_t shape[2] = {zck_bench_rows(o, rows), vocab};
  ce_bench c = {NULL, NULL, with_grad};
  zmlx_status st = zck_bench_random(o->device, ZMLX_BF16, 2, shape, 51, &c.x);
  zmlx_array *u = NULL;
  /* targets: uniform floats in [0, vocab) truncated to i64 */
  if (st == ZMLX_OK)
    st = zmlx_array_random_uniform(o->device, ZMLX_F32, 1, shape, 52, 0.0, (double)vocab - 1, &u);
  if (st == ZMLX_OK) st = zmlx_astype(u, ZMLX_I64, &c.t);
  zmlx_array_release(u);
  double n = (double)shape[0] * (double)vocab;
  double bytes = 2.0 * n * (with_grad ? 2 : 1) + 8.0 * (double)shape[0];
  if (st == ZMLX_OK) st = zck_bench_time_emit(o, op, ZMLX_BF16, 2, shape, bytes, ce_bench_run, &c);
  zmlx_array_release(c.x);
  zmlx_array_release(c.t);
  return st;
}

static zmlx_status bench_cross_entropy(const zmlx_bench_opts *o) {
  ZMLX_CHECK(ce_bench_case(o, "cross_entropy", 8192, 32000, 0));
  ZMLX_CHECK(ce_bench_case(o, "cross_entropy_fused", 8192, 32000, 1));
  return ce_bench_case(o, "cross_entropy", 8192, 128256, 0);
}

const zmlx_catalog_bench zck_catalog_cross_entropy_bench[] = {
    {"cross_entropy", bench_cross_entropy},
    {0},
};
