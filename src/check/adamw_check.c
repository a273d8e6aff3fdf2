/* `zmlx check` and `zmlx bench` cases of src/nn/adamw.c (fused AdamW;
 * bad input and the object's bookkeeping are tests/test_optim.c). Each
 * case takes 10 steps, lr changing per step; before each step it reads the
 * device's params and state back and computes the step in f64 from them,
 * so every step is held to a bound derived from the kernel's f32
 * operations (below) instead of a trajectory drifting from a reference.
 * Lists longer than one launch, an empty tensor, strided gradients,
 * clipping by the global norm (the norm checked too), f32 params and
 * f16 / bf16 params with f32 state, with and without f32 masters, the
 * functional form and the object. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check_util.h"

#define MAX_T 24
#define STEPS 10

static const double U32 = 0x1p-24;

typedef struct hyper {
  double b1, b2, eps, wd, max_norm;
} hyper;

/* One element's step in f64 and the bounds on the kernel's deviation from
 * it: f32 arithmetic, each host coefficient rounded once to f32, g scaled
 * by cs, itself off by rc relative. */
typedef struct elem_want {
  double p, m, v, dp, dm, dv;
} elem_want;

static elem_want step_ref(const hyper *h, double lr, int64_t step, double p, double m, double v,
                          double g, double cs, double rc) {
  const double u = U32, ss = lr / (1 - pow(h->b1, (double)step));
  const double isb2 = 1 / sqrt(1 - pow(h->b2, (double)step)), decay = 1 - lr * h->wd;
  const double ge = g * cs, dg = fabs(g) * cs * (rc + u);
  elem_want w;
  w.m = h->b1 * m + (1 - h->b1) * ge;
  w.dm = 3 * u * (fabs(h->b1 * m) + fabs((1 - h->b1) * ge)) + (1 - h->b1) * dg;
  w.v = h->b2 * v + (1 - h->b2) * ge * ge;
  w.dv = 4 * u * (h->b2 * v + (1 - h->b2) * ge * ge) + (1 - h->b2) * (2 * fabs(ge) + dg) * dg;
  const double d = sqrt(w.v) * isb2 + h->eps;
  double dd = w.v > 0 ? fmin(sqrt(w.dv), w.dv / (2 * sqrt(w.v))) : sqrt(w.dv);
  dd = dd * isb2 + 4 * u * d;
  const double upd = ss * w.m / d;
  const double dupd =
      ss * (w.dm / d + fabs(w.m) * dd / (d * fmax(d - dd, d * 0.5))) + 5 * u * fabs(upd);
  w.p = p * decay - upd;
  w.dp = 3 * u * fabs(p * decay) + dupd + 2 * u * fabs(w.p);
  return w;
}

/* Half the spacing of dt's subnormals: a rounding's absolute error near 0. */
static double subnormal_half_ulp(zmlx_dtype dt) {
  return dt == ZMLX_BF16 ? 0x1p-134 : dt == ZMLX_F16 ? 0x1p-25 : 0x1p-150;
}

typedef struct adamw_case {
  const char *name;
  zmlx_dtype pdt, gdt;
  int n;
  const int64_t *sizes;
  double max_norm;
  int master, object, strided_grads;
} adamw_case;

/* The worst element of each result over the case, by its ratio to its bound. */
enum { R_P, R_M, R_V, R_W, R_NORM, R_COUNT };
static const char *const RESULT_NAME[R_COUNT] = {"param", "exp_avg", "exp_avg_sq", "master",
                                                 "grad norm"};
typedef struct worst {
  double err[R_COUNT], tol[R_COUNT];
} worst;

static void note(worst *w, int r, double got, double want, double tol) {
  double e = fabs(got - want);
  if (!(e == e)) e = INFINITY;
  if (w->err[r] < 0 || e / tol > w->err[r] / w->tol[r]) w->err[r] = e, w->tol[r] = tol;
}

typedef struct tensor_state {
  int64_t n;
  zmlx_array *p, *m, *v, *w, *g;
  double *hp, *hm, *hv, *hw, *hg; /* host copies before the step (hw: the master, or hp) */
} tensor_state;

static void free_host(tensor_state *t) {
  if (t->hw != t->hp) free(t->hw);
  free(t->hp), free(t->hm), free(t->hv), free(t->hg);
  t->hp = t->hm = t->hv = t->hw = t->hg = NULL;
}

static zmlx_status read_state(tensor_state *t) {
  free_host(t);
  ZMLX_CHECK(zck_download(t->p, &t->hp));
  ZMLX_CHECK(zck_download(t->m, &t->hm));
  ZMLX_CHECK(zck_download(t->v, &t->hv));
  if (!t->w) t->hw = t->hp;
  else ZMLX_CHECK(zck_download(t->w, &t->hw));
  return ZMLX_OK;
}

/* A fresh gradient of tensor i: uniform, a few tensors of tiny or large
 * scale (so v spans eps and clipping matters); dense, or every other
 * element of a twice-longer array. */
static zmlx_status make_grad(zmlx_device *dev, const adamw_case *c, int i, tensor_state *t,
                             uint64_t *rng) {
  const double scale = i % 5 == 3 ? 1e-6 : i % 5 == 4 ? 30.0 : 1.0;
  int64_t n = c->strided_grads ? 2 * t->n : t->n;
  double *h = malloc(sizeof(double) * (size_t)(n + 1));
  if (!h) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t e = 0; e < n; e++) h[e] = (c->strided_grads && e % 2) ? NAN : zck_uniform(rng, -scale, scale);
  zmlx_array *a = NULL;
  zmlx_status st = zck_upload(dev, c->gdt, 1, &n, h, &a);
  free(h);
  zmlx_array_release(t->g);
  t->g = NULL;
  if (st == ZMLX_OK && c->strided_grads) {
    int64_t start = 0, stop = n, stride = 2;
    st = zmlx_array_slice(a, &start, &stop, &stride, &t->g);
    zmlx_array_release(a);
  } else if (st == ZMLX_OK) {
    t->g = a;
  }
  free(t->hg);
  t->hg = NULL;
  if (st == ZMLX_OK) st = zck_download(t->g, &t->hg);
  return st;
}

static void compare(const adamw_case *c, const hyper *h, double lr, int64_t step, double cs,
                    double rc, const tensor_state *t, const double *gp, const double *gm,
                    const double *gv, const double *gw, worst *w) {
  const double up = zck_unit_roundoff(c->pdt);
  for (int64_t e = 0; e < t->n; e++) {
    elem_want x = step_ref(h, lr, step, t->hw[e], t->hm[e], t->hv[e], t->hg[e], cs, rc);
    note(w, R_M, gm[e], x.m, x.dm);
    note(w, R_V, gv[e], x.v, x.dv);
    note(w, R_P, gp[e], x.p, x.dp + up * (fabs(x.p) + x.dp) + subnormal_half_ulp(c->pdt));
    if (gw) note(w, R_W, gw[e], x.p, x.dp);
  }
}

/* Steps and checks one case; the state arrays live in ts (the object's
 * references when c->object). */
static zmlx_status run_steps(zmlx_device *dev, const adamw_case *c, const hyper *h,
                             const zmlx_adamw_opts *opts, zmlx_adamw *opt, tensor_state *ts,
                             uint64_t *rng, worst *w) {
  zmlx_array *p[MAX_T], *m[MAX_T], *v[MAX_T], *ms[MAX_T], *g[MAX_T];
  for (int64_t step = 1; step <= STEPS; step++) {
    const double lr = 1e-3 * (double)(1 + step % 3);
    double sumsq = 0;
    int64_t total = 0;
    for (int i = 0; i < c->n; i++) {
      tensor_state *t = &ts[i];
      if (opt) {
        zmlx_array_release(t->m), zmlx_array_release(t->v), zmlx_array_release(t->w);
        t->m = t->v = t->w = NULL;
        ZMLX_CHECK(zmlx_adamw_state(opt, i, &t->m, &t->v, &t->w, NULL));
      }
      ZMLX_CHECK(read_state(t));
      ZMLX_CHECK(make_grad(dev, c, i, t, rng));
      for (int64_t e = 0; e < t->n; e++) sumsq += t->hg[e] * t->hg[e];
      total += t->n;
      p[i] = t->p, m[i] = t->m, v[i] = t->v, ms[i] = t->w, g[i] = t->g;
    }
    zmlx_array *norm = NULL;
    zmlx_status st = opt ? zmlx_adamw_update(opt, g, c->n, lr, &norm)
                         : zmlx_adamw_step(opts, lr, step, c->n, p, g, m, v, c->master ? ms : NULL,
                                           &norm);
    double *hn = NULL;
    if (st == ZMLX_OK) st = zck_download(norm, &hn);
    zmlx_array_release(norm);
    ZMLX_CHECK(st);
    /* the device's sum of squares: per-thread runs, then fixed trees */
    const double norm_ref = sqrt(sumsq), rn = (4 * sqrt((double)total) + 4) * U32;
    note(w, R_NORM, hn[0], norm_ref, rn * norm_ref + 1e-30);
    free(hn);
    double cs = 1, rc = 0;
    if (h->max_norm > 0) cs = fmin(1.0, h->max_norm / (norm_ref + 1e-6)), rc = rn + 4 * U32;
    for (int i = 0; i < c->n; i++) {
      double *gp = NULL, *gm = NULL, *gv = NULL, *gw = NULL;
      st = zck_download(ts[i].p, &gp);
      if (st == ZMLX_OK) st = zck_download(ts[i].m, &gm);
      if (st == ZMLX_OK) st = zck_download(ts[i].v, &gv);
      if (st == ZMLX_OK && ts[i].w) st = zck_download(ts[i].w, &gw);
      if (st == ZMLX_OK) compare(c, h, lr, step, cs, rc, &ts[i], gp, gm, gv, gw, w);
      free(gp), free(gm), free(gv), free(gw);
      ZMLX_CHECK(st);
    }
  }
  return ZMLX_OK;
}

static zmlx_status setup(zmlx_device *dev, const adamw_case *c, const zmlx_adamw_opts *opts,
                         tensor_state *ts, zmlx_adamw **opt, uint64_t *rng) {
  zmlx_array *p[MAX_T];
  for (int i = 0; i < c->n; i++) {
    tensor_state *t = &ts[i];
    t->n = c->sizes[i];
    double *h = malloc(sizeof(double) * (size_t)(t->n + 1));
    zmlx_status st = h ? zck_random(dev, c->pdt, 1, &t->n, -1, 1, rng, h, &t->p)
                       : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    free(h);
    ZMLX_CHECK(st);
    p[i] = t->p;
    if (c->object) continue;
    ZMLX_CHECK(zmlx_array_zeros(dev, ZMLX_F32, 1, &t->n, &t->m));
    ZMLX_CHECK(zmlx_array_zeros(dev, ZMLX_F32, 1, &t->n, &t->v));
    if (c->master) ZMLX_CHECK(zmlx_array_astype(t->p, ZMLX_F32, &t->w));
  }
  return c->object ? zmlx_adamw_create(p, c->n, opts, opt) : ZMLX_OK;
}

static void run_case(const zmlx_check_opts *o, const adamw_case *c, uint64_t *rng) {
  const hyper h = {0.9, 0.999, 1e-8, 0.01, c->max_norm};
  const zmlx_adamw_opts opts = {.struct_size = sizeof opts, .beta1 = h.b1, .beta2 = h.b2,
                                .eps = h.eps, .weight_decay = h.wd, .max_grad_norm = h.max_norm,
                                .master_weights = c->master};
  tensor_state ts[MAX_T];
  memset(ts, 0, sizeof ts);
  zmlx_adamw *opt = NULL;
  worst w;
  for (int r = 0; r < R_COUNT; r++) w.err[r] = -1, w.tol[r] = 1;
  zmlx_status st = setup(o->device, c, &opts, ts, &opt, rng);
  if (st == ZMLX_OK) st = run_steps(o->device, c, &h, &opts, opt, ts, rng, &w);
  char name[96];
  snprintf(name, sizeof name, "%s, %d steps", c->name, STEPS);
  for (int r = 0; r < R_COUNT; r++) {
    if (st != ZMLX_OK) {
      zck_emit_fail(o, "adamw", RESULT_NAME[r], c->pdt, name, st);
      break;
    }
    if (w.err[r] >= 0)
      zck_emit(o, "adamw", RESULT_NAME[r], c->pdt, name, w.err[r], w.tol[r], w.err[r] <= w.tol[r]);
  }
  for (int i = 0; i < c->n; i++) {
    free_host(&ts[i]);
    zmlx_array *a[5] = {ts[i].p, ts[i].m, ts[i].v, ts[i].w, ts[i].g};
    for (int k = 0; k < 5; k++) zmlx_array_release(a[k]);
  }
  zmlx_adamw_destroy(opt);
  zmlx_clear_error();
}

static const int64_t SIZES[] = {1, 7, 4097, 33, 0, 100000, 256, 1023, 3, 5000, 17,
                                65, 2, 9, 129, 300, 4, 70000, 8, 11};

/* f32: the params' dtype; f16 / bf16: 16-bit params with f32 state. */
static zmlx_status check_adamw(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 9103u;
  const zmlx_dtype dt = o->dtype;
  if (dt == ZMLX_F32) {
    /* 20 tensors: four launches, an empty tensor among them */
    adamw_case a = {"20 tensors", dt, dt, 20, SIZES, 0, 0, 0, 0};
    adamw_case b = {"20 tensors, clipped, strided bf16 grads", dt, ZMLX_BF16, 20, SIZES, 1.0, 0, 0, 1};
    adamw_case c = {"object, 5 tensors, clipped", dt, dt, 5, SIZES + 1, 2.0, 0, 1, 0};
    run_case(o, &a, &rng);
    run_case(o, &b, &rng);
    run_case(o, &c, &rng);
  } else {
    adamw_case a = {"6 tensors, f32 state", dt, dt, 6, SIZES, 0, 0, 0, 0};
    adamw_case b = {"6 tensors, f32 masters, clipped, f32 grads", dt, ZMLX_F32, 6, SIZES, 0.5, 1, 0, 0};
    adamw_case c = {"object, 17 tensors, f32 masters", dt, dt, 17, SIZES, 0, 1, 1, 0};
    run_case(o, &a, &rng);
    run_case(o, &b, &rng);
    run_case(o, &c, &rng);
  }
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_adamw_ops[] = {
    {"adamw", check_adamw},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct adamw_bench {
  int n;
  zmlx_array *p[16], *g[16], *m[16], *v[16];
  int64_t step;
} adamw_bench;

static zmlx_status adamw_bench_run(void *ctx) {
  adamw_bench *b = ctx;
  zmlx_adamw_opts opts = {.struct_size = sizeof opts, .weight_decay = 0.01};
  return zmlx_adamw_step(&opts, 1e-3, ++b->step, b->n, b->p, b->g, b->m, b->v, NULL, NULL);
}

/* The shape: 16 f32 params of 4096 x 4096 (of 64 x 4096 on a CPU
 * device). Bytes: p, g, m, v read and p, m, v written, 28 per element. */
static zmlx_status bench_adamw(const zmlx_bench_opts *o) {
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(o->device, &info));
  adamw_bench b;
  memset(&b, 0, sizeof b);
  b.n = 16;
  int64_t sh[2] = {info.is_cpu ? 64 : 4096, 4096};
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < b.n && st == ZMLX_OK; i++) {
    st = zck_bench_random(o->device, ZMLX_F32, 2, sh, 70 + (uint64_t)i, &b.p[i]);
    if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_F32, 2, sh, 90 + (uint64_t)i, &b.g[i]);
    if (st == ZMLX_OK) st = zmlx_array_zeros(o->device, ZMLX_F32, 2, sh, &b.m[i]);
    if (st == ZMLX_OK) st = zmlx_array_zeros(o->device, ZMLX_F32, 2, sh, &b.v[i]);
  }
  int64_t shape[3] = {b.n, sh[0], sh[1]};
  const double bytes = 28.0 * (double)b.n * (double)(sh[0] * sh[1]);
  if (st == ZMLX_OK)
    st = zck_bench_time_emit(o, "adamw", ZMLX_F32, 3, shape, bytes, adamw_bench_run, &b);
  for (int i = 0; i < b.n; i++) {
    zmlx_array_release(b.p[i]), zmlx_array_release(b.g[i]);
    zmlx_array_release(b.m[i]), zmlx_array_release(b.v[i]);
  }
  return st;
}

const zmlx_catalog_bench zck_catalog_adamw_bench[] = {
    {"adamw", bench_adamw},
    {0},
};
