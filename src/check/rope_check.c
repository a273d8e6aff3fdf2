/* `zmlx check` and `zmlx bench` cases of src/ops/rope.c: forward against
 * an f64 reference on fresh random inputs with poisoned outputs, gradients,
 * bad input, and the LLM shapes the benchmark times. Part of the check
 * library (the CLI and the tests link it; libzmlx does not). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "autograd/ad.h"
#include "kernel/kernel.h"
#include "check/check_util.h"
#include "ops/rope.h"

/* ================================================== check helpers (shared) */

/* =============================================================== check */

typedef struct rope_case {
  int64_t B, S, Hq, Hk, D;
  int R; /* 0 = D */
  zmlx_rope_mode mode;
  zmlx_rope_layout layout;
  int offsets; /* 0: positions s; 1: offsets[b] + s; 2: positions[b, s] */
  int table;
  double base, scale;
} rope_case;

/* Host reference of one tensor [B, S|H, H|S, D] (dir = +1 / -1); pos[b * S + s]
 * is each token's position. */
static void rope_ref(const double *x, double *y, int64_t B, int64_t S, int64_t H, int64_t D, int R,
                     zmlx_rope_mode mode, zmlx_rope_layout lay, const double *pos, double base,
                     double scale, const double *ctab, const double *stab, int64_t P, double dir) {
  int half = R / 2;
  for (int64_t b = 0; b < B; b++)
    for (int64_t s = 0; s < S; s++)
      for (int64_t h = 0; h < H; h++) {
        int64_t row = lay == ZMLX_ROPE_BSHD ? (b * S + s) * H + h : (b * H + h) * S + s;
        const double *xr = x + row * D;
        double *yr = y + row * D;
        double p = pos[b * S + s];
        for (int64_t d = R; d < D; d++) yr[d] = xr[d];
        for (int i = 0; i < half; i++) {
          double c, sn;
          if (ctab) {
            int64_t pi = (int64_t)p;
            if (pi >= P) pi = P - 1;
            if (pi < 0) pi = 0;
            c = ctab[pi * half + i];
            sn = stab[pi * half + i];
          } else {
            double ang = p * scale * pow(base, -(2.0 * i) / R);
            c = cos(ang);
            sn = sin(ang);
          }
          sn *= dir;
          int64_t i0 = mode == ZMLX_ROPE_INTERLEAVED ? 2 * i : i;
          int64_t i1 = mode == ZMLX_ROPE_INTERLEAVED ? 2 * i + 1 : i + half;
          yr[i0] = xr[i0] * c - xr[i1] * sn;
          yr[i1] = xr[i0] * sn + xr[i1] * c;
        }
      }
}

typedef struct rope_gctx {
  zmlx_rope_opts o;
  zmlx_array *w;
} rope_gctx;

static zmlx_status rope_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  rope_gctx *g = ud;
  return zmlx_rope(in[0], &g->o, out);
}

static zmlx_status rope_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  rope_gctx *g = ud;
  zmlx_array *y = NULL, *m = NULL;
  ZMLX_CHECK(zmlx_rope(in[0], &g->o, &y));
  zmlx_status st = zmlx_mul(y, g->w, &m);
  if (st == ZMLX_OK) st = zmlx_sum(m, NULL, 0, 0, out);
  zmlx_array_release(y);
  zmlx_array_release(m);
  return st;
}

static void rope_shape_str(char *s, size_t n, const rope_case *c) {
  snprintf(s, n, "%s[%lld,%lld,%lld|%lld,%lld] R=%d %s%s%s",
           c->layout == ZMLX_ROPE_BSHD ? "BSHD" : "BHSD", (long long)c->B, (long long)c->S,
           (long long)c->Hq, (long long)c->Hk, (long long)c->D, c->R ? c->R : (int)c->D,
           c->mode == ZMLX_ROPE_INTERLEAVED ? "il" : "half",
           c->offsets == 1 ? " off" : c->offsets == 2 ? " pos" : "",
           c->table ? " tab" : "");
}

static zmlx_status rope_run_case(const zmlx_check_opts *o, const rope_case *c, uint64_t *rng,
                                 int grad) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = grad == 1 ? ZMLX_F32 : o->dtype;
  char name[96];
  rope_shape_str(name, sizeof name, c);
  int R = c->R ? c->R : (int)c->D;
  int lay = c->layout;
  int64_t shq[4], shk[4];
  shq[0] = shk[0] = c->B;
  shq[3] = shk[3] = c->D;
  shq[lay ? 2 : 1] = shk[lay ? 2 : 1] = c->S;
  shq[lay ? 1 : 2] = c->Hq;
  shk[lay ? 1 : 2] = c->Hk;
  int64_t nq = c->B * c->S * c->Hq * c->D, nk = c->B * c->S * c->Hk * c->D;
  int64_t P = c->S + 40;
  double *xq = malloc(sizeof(double) * (size_t)nq), *xk = malloc(sizeof(double) * (size_t)nk);
  double *wq = malloc(sizeof(double) * (size_t)nq), *wk = malloc(sizeof(double) * (size_t)nk);
  double *off = malloc(sizeof(double) * (size_t)c->B);
  double *pos = malloc(sizeof(double) * (size_t)(c->B * c->S));
  double *ct = malloc(sizeof(double) * (size_t)(P * (R / 2) + 1));
  double *stb = malloc(sizeof(double) * (size_t)(P * (R / 2) + 1));
  double *gotq = NULL, *gotk = NULL;
  zmlx_array *q = NULL, *k = NULL, *aoff = NULL, *apos = NULL, *acos = NULL, *asin = NULL, *qo = NULL,
             *ko = NULL, *w = NULL;
  zmlx_array *grads[1] = {NULL};
  zmlx_status st = ZMLX_OK;
  if (!xq || !xk || !wq || !wk || !off || !pos || !ct || !stb) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  for (int64_t b = 0; b < c->B; b++) off[b] = (double)(int)(zck_uniform(rng, 0, 1) * 40);
  /* table boundaries: sequence 0 ends on the table's last row (position
   * P - 1), the last one runs past it (positions clamp to that row) */
  if (c->B > 1) {
    off[0] = (double)(P - c->S);
    off[c->B - 1] = (double)(P - c->S + 3);
  }
  /* positions[b, s]: offsets[b] + s as a left-padded batch has it, a
   * restart (packed sequences), a row past the table, and one negative
   * position (clamps to the table's first row; in-kernel angles rotate back) */
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t s = 0; s < c->S; s++) {
      double p = (double)s;
      if (c->offsets == 1) p += off[b];
      if (c->offsets == 2) {
        p = (b & 1) ? (double)(int)(zck_uniform(rng, 0, 1) * (double)(P + 4))
                    : (double)(s >= c->S / 2 ? s - c->S / 2 : s) + off[b];
        if (b == 0 && s == 0) p = -3;
      }
      pos[b * c->S + s] = p;
    }
  for (int64_t p = 0; p < P; p++)
    for (int i = 0; i < R / 2; i++) {
      double ang = p * 0.7 * pow(500.0, -(2.0 * i) / R);
      ct[p * (R / 2) + i] = (float)cos(ang);
      stb[p * (R / 2) + i] = (float)sin(ang);
    }
  st = zck_random(dev, dt, 4, shq, -1, 1, rng, xq, &q);
  if (st == ZMLX_OK) st = zck_random(dev, dt, 4, shk, -1, 1, rng, xk, &k);
  if (st == ZMLX_OK && c->offsets == 1) {
    int64_t sb = c->B;
    st = zck_upload(dev, ZMLX_I32, 1, &sb, off, &aoff);
  }
  if (st == ZMLX_OK && c->offsets == 2) {
    int64_t sp[2] = {c->B, c->S};
    st = zck_upload(dev, ZMLX_I32, 2, sp, pos, &apos);
  }
  if (st == ZMLX_OK && c->table) {
    int64_t st2[2] = {P, R / 2};
    st = zck_upload(dev, ZMLX_F32, 2, st2, ct, &acos);
    if (st == ZMLX_OK) st = zck_upload(dev, ZMLX_F32, 2, st2, stb, &asin);
  }
  if (st != ZMLX_OK) goto done;
  zmlx_rope_opts ro = {.mode = c->mode, .layout = c->layout, .rotary_dims = c->R,
                       .base = c->base, .scale = c->scale, .offsets = aoff, .cos = acos,
                       .sin = asin, .positions = apos};
  /* x in [-1, 1], two products per output. The f32 angle p scale
   * base^(-2i/R) carries ~15 u32 of itself (exp2 of a rounded exponent),
   * which cos / sin pass on as an absolute error: the bound's scale is the
   * largest angle (tables hold exact f32 values: no angle error). */
  double max_pos = 0;
  for (int64_t i = 0; i < c->B * c->S; i++) max_pos = fmax(max_pos, fabs(pos[i]));
  double max_ang = c->table ? 0 : max_pos * (c->scale ? fabs(c->scale) : 1);
  const zck_bound bound = zck_bound_of(ZCK_TOL_ELEMENTWISE, dt, 2 * (1 + max_ang), 1);
  double e, tol;
  if (grad == 0) {
    /* Forward into poisoned outputs, q and k (GQA) in one pass each. */
    rope_cfg cq, ck;
    st = zmlxi_rope_validate("zmlx_rope_qk: argument 'q'", q, &ro, &cq);
    if (st == ZMLX_OK) st = zmlxi_rope_validate("zmlx_rope_qk: argument 'k'", k, &ro, &ck);
    if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 4, shq, NAN, &qo);
    if (st == ZMLX_OK) st = zmlx_array_full(dev, dt, 4, shk, NAN, &ko);
    if (st == ZMLX_OK) st = zmlxi_rope_launch(q, &cq, qo);
    if (st == ZMLX_OK) st = zmlxi_rope_launch(k, &ck, ko);
    if (st == ZMLX_OK) st = zck_download(qo, &gotq);
    if (st == ZMLX_OK) st = zck_download(ko, &gotk);
    if (st != ZMLX_OK) goto done;
    rope_ref(xq, wq, c->B, c->S, c->Hq, c->D, R, c->mode, c->layout, pos,
             c->base ? c->base : 10000, c->scale ? c->scale : 1, c->table ? ct : NULL, stb, P, 1);
    rope_ref(xk, wk, c->B, c->S, c->Hk, c->D, R, c->mode, c->layout, pos,
             c->base ? c->base : 10000, c->scale ? c->scale : 1, c->table ? ct : NULL, stb, P, 1);
    zck_within(gotq, wq, nq, bound, &e, &tol);
    int ok = zck_within_acc(gotk, wk, NULL, nk, bound, &e, &tol);
    zck_emit(o, "rope", "fwd q,k", dt, name, e, tol, ok);
    /* The public GQA entry point must give the same. */
    zmlx_array_release(qo);
    zmlx_array_release(ko);
    qo = ko = NULL;
    free(gotq);
    free(gotk);
    gotq = gotk = NULL;
    zck_poison_pool(dev, dt, 4, shq);
    st = zmlx_rope_qk(q, k, &ro, &qo, &ko);
    if (st == ZMLX_OK) st = zck_download(qo, &gotq);
    if (st == ZMLX_OK) st = zck_download(ko, &gotk);
    if (st != ZMLX_OK) goto done;
    zck_within(gotq, wq, nq, bound, &e, &tol);
    ok = zck_within_acc(gotk, wk, NULL, nk, bound, &e, &tol);
    zck_emit(o, "rope", "fwd rope_qk", dt, name, e, tol, ok);
  } else if (grad == 1) {
    /* f32 finite differences on q. */
    st = zck_random(dev, ZMLX_F32, 4, shq, -1, 1, rng, wq, &w);
    if (st != ZMLX_OK) goto done;
    rope_gctx g = {ro, w};
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(rope_loss, &g, &q, 1, 1e-2, zck_fd_tol(), &rep);
    if (st != ZMLX_OK) goto done;
    e = rep.inputs[0].max_abs_err;
    if (rep.jvp_checked) e = fmax(e, rep.jvp_abs_err);
    zck_emit(o, "rope", "grad x (fd)", ZMLX_F32, name, e, zck_fd_tol(), rep.passed);
  } else {
    /* Analytic VJP in o->dtype vs the f64 inverse rotation. */
    st = zck_random(dev, dt, 4, shq, -1, 1, rng, wq, &w);
    if (st != ZMLX_OK) goto done;
    int argn = 0;
    rope_gctx g = {ro, NULL};
    st = zmlx_vjp(rope_fn, &g, &q, 1, &argn, 1, w, &qo, grads);
    if (st == ZMLX_OK) st = zck_download(grads[0], &gotq);
    if (st != ZMLX_OK) goto done;
    double *want = malloc(sizeof(double) * (size_t)nq);
    if (!want) {
      st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
      goto done;
    }
    rope_ref(wq, want, c->B, c->S, c->Hq, c->D, R, c->mode, c->layout, pos,
             c->base ? c->base : 10000, c->scale ? c->scale : 1, c->table ? ct : NULL, stb, P, -1);
    int ok = zck_within(gotq, want, nq, bound, &e, &tol);
    free(want);
    zck_emit(o, "rope", "grad x (vjp)", dt, name, e, tol, ok);
  }
done:
  if (st != ZMLX_OK)
    zck_emit_fail(o, "rope", grad == 0 ? "fwd q,k" : "grad x", dt, name, st);
  free(xq); free(xk); free(wq); free(wk); free(off); free(pos); free(ct); free(stb);
  free(gotq); free(gotk);
  zmlx_array_release(q); zmlx_array_release(k); zmlx_array_release(aoff);
  zmlx_array_release(apos);
  zmlx_array_release(acos); zmlx_array_release(asin); zmlx_array_release(qo);
  zmlx_array_release(ko); zmlx_array_release(w); zmlx_array_release(grads[0]);
  zmlx_clear_error();
  return ZMLX_OK;
}

static void rope_bad_inputs(const zmlx_check_opts *o) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  zmlx_array *x3 = NULL, *x = NULL, *xo = NULL, *xi = NULL, *k = NULL, *y = NULL, *y2 = NULL;
  int64_t s3[3] = {2, 3, 8}, s4[4] = {1, 3, 2, 8}, so[4] = {1, 3, 2, 7}, sk[4] = {1, 4, 2, 8};
  if (zmlx_array_zeros(dev, dt, 3, s3, &x3) != ZMLX_OK || zmlx_array_zeros(dev, dt, 4, s4, &x) ||
      zmlx_array_zeros(dev, dt, 4, so, &xo) || zmlx_array_zeros(dev, ZMLX_I32, 4, s4, &xi) ||
      zmlx_array_zeros(dev, dt, 4, sk, &k)) {
    zck_emit_fail(o, "rope", "bad input", dt, "setup", ZMLX_ERR_BACKEND);
    goto done;
  }
  zck_expect(o, "rope", "bad: rank 3", zmlx_rope(x3, NULL, &y), y, ZMLX_ERR_SHAPE, "rank");
  y = NULL;
  zck_expect(o, "rope", "bad: odd head_dim", zmlx_rope(xo, NULL, &y), y, ZMLX_ERR_SHAPE,
                 "odd");
  y = NULL;
  zmlx_rope_opts big = {.rotary_dims = 10};
  zck_expect(o, "rope", "bad: rotary > head_dim", zmlx_rope(x, &big, &y), y, ZMLX_ERR_SHAPE,
                 "rotary_dims");
  y = NULL;
  zck_expect(o, "rope", "bad: dtype i32", zmlx_rope(xi, NULL, &y), y, ZMLX_ERR_DTYPE,
                 "dtype");
  y = NULL;
  zck_expect(o, "rope", "bad: q/k seq mismatch", zmlx_rope_qk(x, k, NULL, &y, &y2), y,
                 ZMLX_ERR_SHAPE, "seq");
  zmlx_array_release(y2);
  y2 = NULL;
  /* positions: [batch, seq] i32 on x's device, and never with offsets */
  int64_t sp[2] = {1, 3}, sp_bad[2] = {1, 2}, sb = 1;
  zmlx_array *pos = NULL, *pos_bad = NULL, *pos_f = NULL, *off = NULL;
  if (zmlx_array_zeros(dev, ZMLX_I32, 2, sp, &pos) == ZMLX_OK &&
      zmlx_array_zeros(dev, ZMLX_I32, 2, sp_bad, &pos_bad) == ZMLX_OK &&
      zmlx_array_zeros(dev, ZMLX_F32, 2, sp, &pos_f) == ZMLX_OK &&
      zmlx_array_zeros(dev, ZMLX_I32, 1, &sb, &off) == ZMLX_OK) {
    zmlx_rope_opts both = {.positions = pos, .offsets = off}, shp = {.positions = pos_bad},
                   dty = {.positions = pos_f};
    zck_expect(o, "rope", "bad: positions and offsets", zmlx_rope(x, &both, &y), y,
               ZMLX_ERR_INVALID_ARG, "not both");
    y = NULL;
    zck_expect(o, "rope", "bad: positions shape", zmlx_rope(x, &shp, &y), y, ZMLX_ERR_SHAPE,
               "[batch, seq] = [1, 3]");
    y = NULL;
    zck_expect(o, "rope", "bad: positions f32", zmlx_rope(x, &dty, &y), y, ZMLX_ERR_DTYPE, "i32");
    y = NULL;
  } else {
    zck_emit_fail(o, "rope", "bad input", dt, "positions setup", ZMLX_ERR_BACKEND);
  }
  zmlx_array_release(pos); zmlx_array_release(pos_bad); zmlx_array_release(pos_f);
  zmlx_array_release(off);
done:
  zmlx_array_release(x3); zmlx_array_release(x); zmlx_array_release(xo);
  zmlx_array_release(xi); zmlx_array_release(k);
}

static zmlx_status rope_check(const zmlx_check_opts *o) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x726F7065ULL;
  if (!rng) rng = 1;
  const zmlx_rope_mode H = ZMLX_ROPE_HALF_SPLIT, I = ZMLX_ROPE_INTERLEAVED;
  const zmlx_rope_layout L0 = ZMLX_ROPE_BSHD, L1 = ZMLX_ROPE_BHSD;
  rope_case fwd[] = {
      {1, 1, 1, 1, 2, 0, H, L0, 0, 0, 0, 0},
      {2, 5, 4, 2, 16, 0, H, L0, 1, 0, 0, 0},
      {2, 5, 3, 1, 16, 8, I, L0, 1, 0, 500, 0.5},
      {1, 7, 3, 3, 10, 6, H, L1, 0, 1, 0, 0},
      {2, 3, 5, 1, 9, 4, I, L1, 1, 1, 0, 0},
      {3, 6, 4, 2, 16, 0, H, L0, 2, 1, 0, 0},
      {2, 9, 3, 1, 12, 8, I, L1, 2, 0, 500, 0.5},
      {2, 128, 32, 8, 128, 64, H, L0, 1, 0, 0, 0},
      {4, 64, 8, 2, 64, 0, H, L1, 2, 1, 0, 0},
      {1, 64, 7, 1, 64, 0, I, L1, 1, 0, 1e6, 1},
      {1, 96, 5, 3, 80, 32, H, L0, 1, 1, 0, 0},
  };
  int nf = o->quick ? 7 : (int)(sizeof fwd / sizeof fwd[0]);
  for (int i = 0; i < nf; i++) rope_run_case(o, &fwd[i], &rng, 0);
  rope_case gr[] = {
      {1, 3, 2, 2, 8, 0, H, L0, 1, 0, 0, 0},
      {2, 2, 2, 1, 6, 4, I, L1, 1, 1, 0, 0},
      {2, 4, 2, 1, 8, 0, H, L0, 2, 0, 0, 0},
  };
  int ng = (int)(sizeof gr / sizeof gr[0]);
  for (int i = 0; i < ng; i++) {
    if (o->dtype == ZMLX_F32) rope_run_case(o, &gr[i], &rng, 1);
    rope_run_case(o, &gr[i], &rng, 2);
  }
  if (!o->quick) {
    rope_case big = {2, 16, 4, 2, 64, 32, I, L1, 1, 0, 0, 0};
    rope_run_case(o, &big, &rng, 2);
  }
  rope_bad_inputs(o);
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_rope_ops[] = {
    {"rope", rope_check},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct rope_bench {
  zmlx_array *x;
  zmlx_rope_opts opts;
} rope_bench;

static zmlx_status rope_bench_run(void *p) {
  rope_bench *c = p;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_rope(c->x, &c->opts, &y);
  zmlx_array_release(y);
  return st;
}

/* bf16 [8, 4096, 32, 128] BSHD, read once and written once; the angles are
 * computed in-kernel (mode 0) or read from f32 [4096, 64] tables (mode 1,
 * whose bytes count as the tables' size; they stay in L2). */
static zmlx_status rope_bench_case(const zmlx_bench_opts *o, const char *op, zmlx_rope_mode mode,
                                   int tables) {
  int64_t shape[4] = {zck_bench_rows(o, 8), 4096, 32, 128}, tshape[2] = {4096, 64};
  rope_bench c;
  memset(&c, 0, sizeof c);
  c.opts.mode = mode;
  zmlx_status st = zck_bench_random(o->device, ZMLX_BF16, 4, shape, 31, &c.x);
  if (st == ZMLX_OK && tables) st = zck_bench_random(o->device, ZMLX_F32, 2, tshape, 32, &c.opts.cos);
  if (st == ZMLX_OK && tables) st = zck_bench_random(o->device, ZMLX_F32, 2, tshape, 33, &c.opts.sin);
  double n = (double)shape[0] * (double)shape[1] * (double)shape[2] * (double)shape[3];
  double bytes = 4.0 * n + (tables ? 2.0 * 4.0 * 4096 * 64 : 0);
  if (st == ZMLX_OK) st = zck_bench_time_emit(o, op, ZMLX_BF16, 4, shape, bytes, rope_bench_run, &c);
  zmlx_array_release(c.x);
  zmlx_array_release(c.opts.cos);
  zmlx_array_release(c.opts.sin);
  return st;
}

static zmlx_status rope_bench_all(const zmlx_bench_opts *o) {
  ZMLX_CHECK(rope_bench_case(o, "rope", ZMLX_ROPE_HALF_SPLIT, 0));
  ZMLX_CHECK(rope_bench_case(o, "rope_tables", ZMLX_ROPE_HALF_SPLIT, 1));
  return rope_bench_case(o, "rope_interleaved", ZMLX_ROPE_INTERLEAVED, 0);
}

const zmlx_catalog_bench zck_catalog_rope_bench[] = {
    {"rope", rope_bench_all},
    {0},
};
