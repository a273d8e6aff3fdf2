/* `zmlx check` cases of src/ops/attention.c: forward (out and lse) and the
 * VJP of q, k, v and an additive mask against a naive f64 reference on
 * fresh random inputs with poisoned outputs, f32 finite differences, and
 * bad input. Sequence lengths around the kernels' edges (1, 2, 15, 16, 17;
 * 127 and 300 in the full check), q_len != kv_len with bottom-right causal
 * alignment, GQA and MQA, every head_dim the issue names, both layouts,
 * additive and bool masks, and fully masked rows (0 out, lse -inf). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check_util.h"
#include "ops/attention.h"

typedef struct attn_case {
  int64_t B, Hq, Hkv, Sq, Sk, D;
  int layout, causal;
  int mask;          /* 0 none, 1 additive [Sq, Sk], 2 bool [B, 1, Sq, Sk], 3 additive [1, Hq, Sq, Sk] */
  int dead_row;      /* the mask drops every key of query row 0 */
} attn_case;

/* Offset of row (b, h, s) of a [B, H, S, D] / [B, S, H, D] array. */
static int64_t row_at(const attn_case *c, int64_t b, int64_t h, int64_t s, int64_t H, int64_t S) {
  return c->layout == ZMLX_ATTN_BHSD ? ((b * H + h) * S + s) * c->D : ((b * S + s) * H + h) * c->D;
}

static int64_t mask_dims(const attn_case *c, int64_t *shape) {
  if (c->mask == 1) {
    shape[0] = c->Sq, shape[1] = c->Sk;
    return 2;
  }
  shape[0] = c->mask == 2 ? c->B : 1;
  shape[1] = c->mask == 2 ? 1 : c->Hq;
  shape[2] = c->Sq, shape[3] = c->Sk;
  return 4;
}

static int64_t mask_at(const attn_case *c, int64_t b, int64_t h, int64_t i, int64_t j) {
  if (c->mask == 1) return i * c->Sk + j;
  if (c->mask == 2) return (b * c->Sq + i) * c->Sk + j;
  return (h * c->Sq + i) * c->Sk + j;
}

/* The reference of one case in f64: out, lse, and with g (cotangent of out)
 * and gl (of lse) the gradients dq, dk, dv, dm (dm: per mask element, summed
 * over what broadcasts), and the terms' sizes behind each (tq, tk, tv, to:
 * the magnitudes the f32 work's error is relative to). */
typedef struct attn_ref {
  double *out, *lse, *to, *tl, *dq, *dk, *dv, *dm, *tq, *tk, *tv, *tm;
} attn_ref;

static void reference(const attn_case *c, double scale, const double *q, const double *k,
                      const double *v, const double *m, const double *g, const double *gl,
                      attn_ref *r) {
  const int64_t G = c->Hq / c->Hkv, D = c->D;
  double *s = malloc(sizeof(double) * (size_t)c->Sk), *p = malloc(sizeof(double) * (size_t)c->Sk);
  double *dp = malloc(sizeof(double) * (size_t)c->Sk), *sa = malloc(sizeof(double) * (size_t)c->Sk);
  for (int64_t b = 0; b < c->B; b++)
    for (int64_t h = 0; h < c->Hq; h++)
      for (int64_t i = 0; i < c->Sq; i++) {
        const int64_t hk = h / G, qo = row_at(c, b, h, i, c->Hq, c->Sq);
        const int64_t ri = (b * c->Hq + h) * c->Sq + i;
        double mx = -INFINITY, amax = 0;
        for (int64_t j = 0; j < c->Sk; j++) {
          const int64_t ko = row_at(c, b, hk, j, c->Hkv, c->Sk);
          double dot = 0, adot = 0;
          for (int64_t d = 0; d < D; d++) dot += q[qo + d] * k[ko + d], adot += fabs(q[qo + d] * k[ko + d]);
          s[j] = scale * dot;
          sa[j] = fabs(scale) * adot;
          int keep = !c->causal || j <= i + c->Sk - c->Sq;
          if (m && c->mask == 2) keep = keep && m[mask_at(c, b, h, i, j)] != 0;
          else if (m) s[j] += m[mask_at(c, b, h, i, j)];
          if (!keep || s[j] == -INFINITY) s[j] = -INFINITY;
          else mx = fmax(mx, s[j]), amax = fmax(amax, sa[j] + (m && c->mask != 2 ? fabs(m[mask_at(c, b, h, i, j)]) : 0));
        }
        double l = 0;
        for (int64_t j = 0; j < c->Sk; j++) l += p[j] = s[j] == -INFINITY ? 0 : exp(s[j] - mx);
        const double lse = l > 0 ? mx + log(l) : -INFINITY;
        r->lse[ri] = lse;
        /* an absolute error e in a score moves p_j by p_j e: the scores'
         * f32 sums are off by ~ their terms' size (amax) */
        r->tl[ri] = 1 + amax;
        double delta = 0, adelta = 0;
        for (int64_t d = 0; d < D; d++) {
          double o = 0, ao = 0;
          for (int64_t j = 0; j < c->Sk; j++) {
            if (p[j] == 0) continue;
            const double vv = v[row_at(c, b, hk, j, c->Hkv, c->Sk) + d];
            o += p[j] / l * vv;
            ao += p[j] / l * fabs(vv);
          }
          r->out[qo + d] = o;
          r->to[qo + d] = ao * (1 + 2 * amax);
          if (g) delta += g[qo + d] * o, adelta += fabs(g[qo + d]) * ao;
        }
        if (!g) continue;
        delta -= gl ? gl[ri] : 0;
        for (int64_t j = 0; j < c->Sk; j++) {
          const int64_t ko = row_at(c, b, hk, j, c->Hkv, c->Sk);
          double pj = p[j] == 0 ? 0 : p[j] / l, dpj = 0, adp = 0;
          for (int64_t d = 0; d < D; d++) dpj += g[qo + d] * v[ko + d], adp += fabs(g[qo + d] * v[ko + d]);
          dp[j] = pj * (dpj - delta);                                   /* ds */
          const double ta = pj * (adp + adelta + (gl ? fabs(gl[ri]) : 0)) * (1 + 2 * amax);
          for (int64_t d = 0; d < D; d++) {
            r->dq[qo + d] += scale * dp[j] * k[ko + d];
            r->tq[qo + d] += fabs(scale) * ta * fabs(k[ko + d]);
            r->dk[ko + d] += scale * dp[j] * q[qo + d];
            r->tk[ko + d] += fabs(scale) * ta * fabs(q[qo + d]);
            r->dv[ko + d] += pj * g[qo + d];
            r->tv[ko + d] += pj * (1 + 2 * amax) * fabs(g[qo + d]);
          }
          if (r->dm && m && c->mask != 2) {
            r->dm[mask_at(c, b, h, i, j)] += dp[j];
            r->tm[mask_at(c, b, h, i, j)] += ta;
          }
        }
      }
  free(s);
  free(p);
  free(dp);
  free(sa);
}

static void case_name(const attn_case *c, char *buf, size_t cap) {
  static const char *masks[] = {"", " add-mask", " bool-mask", " head-mask"};
  snprintf(buf, cap, "B%lld Hq%lld Hkv%lld Sq%lld Sk%lld D%lld %s%s%s%s", (long long)c->B,
           (long long)c->Hq, (long long)c->Hkv, (long long)c->Sq, (long long)c->Sk, (long long)c->D,
           c->layout ? "bshd" : "bhsd", c->causal ? " causal" : "", masks[c->mask],
           c->dead_row ? " dead-row" : "");
}

typedef struct attn_fn_data {
  zmlx_attention_opts o;
  zmlx_array *w, *wl; /* loss weights of out and lse (NULL: return out) */
} attn_fn_data;

static zmlx_status attn_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  attn_fn_data *f = ud;
  zmlx_attention_opts o = f->o;
  if (n > 3) o.mask = in[3];
  zmlx_array *y = NULL, *l = NULL, *a = NULL, *b = NULL;
  ZMLX_CHECK(zmlx_attention(in[0], in[1], in[2], &o, &y, &l));
  if (!f->w) {
    zmlx_array_release(l);
    *out = y;
    return ZMLX_OK;
  }
  zmlx_status st = zck_weighted_sum(y, f->w, &a);
  if (st == ZMLX_OK) st = zck_weighted_sum(l, f->wl, &b);
  if (st == ZMLX_OK) st = zmlx_add(a, b, out);
  zmlx_array_release(y);
  zmlx_array_release(l);
  zmlx_array_release(a);
  zmlx_array_release(b);
  return st;
}

/* The VJP through autograd with cotangents g (out) and gl (lse, via a
 * weighted sum): dq, dk, dv (and dm) downloaded into got[0..3]. */
static zmlx_status run_vjp(const zmlx_check_opts *o, const attn_case *c, zmlx_array **in, int nin,
                           zmlx_attention_opts ao, zmlx_array *ag, zmlx_array *agl, double **got) {
  (void)o;
  (void)c;
  attn_fn_data f = {ao, ag, agl};
  zmlx_array *grads[4] = {0};
  zmlx_array *value = NULL;
  int argnums[4] = {0, 1, 2, 3};
  if (c->mask == 2) nin = 3; /* a bool mask is a constant: it rides in the options */
  zmlx_status st = zmlx_value_and_grad(attn_fn, &f, in, nin, argnums, nin, &value, grads);
  for (int i = 0; st == ZMLX_OK && i < nin; i++) st = zck_download(grads[i], &got[i]);
  zmlx_array_release(value);
  for (int i = 0; i < 4; i++) zmlx_array_release(grads[i]);
  return st;
}

static void attn_case_run(const zmlx_check_opts *o, const attn_case *c, int grads, uint64_t *rng) {
  const zmlx_dtype dt = o->dtype;
  char name[96];
  case_name(c, name, sizeof name);
  const int64_t nq = c->B * c->Hq * c->Sq * c->D, nk = c->B * c->Hkv * c->Sk * c->D;
  const int64_t nrows = c->B * c->Hq * c->Sq;
  int64_t msh[4];
  const int mnd = c->mask ? (int)mask_dims(c, msh) : 0;
  int64_t nm = 1;
  for (int i = 0; i < mnd; i++) nm *= msh[i];
  double *q = malloc(sizeof(double) * (size_t)nq), *k = malloc(sizeof(double) * (size_t)nk);
  double *v = malloc(sizeof(double) * (size_t)nk), *m = c->mask ? malloc(sizeof(double) * (size_t)nm) : NULL;
  double *g = calloc((size_t)nq, sizeof(double)), *gl = calloc((size_t)nrows, sizeof(double));
  attn_ref r;
  double **slots[] = {&r.out, &r.to, &r.dq, &r.tq};
  double **kslots[] = {&r.dk, &r.tk, &r.dv, &r.tv};
  memset(&r, 0, sizeof r);
  for (int i = 0; i < 4; i++) *slots[i] = calloc((size_t)nq, sizeof(double));
  for (int i = 0; i < 4; i++) *kslots[i] = calloc((size_t)nk, sizeof(double));
  r.lse = calloc((size_t)nrows, sizeof(double));
  r.tl = calloc((size_t)nrows, sizeof(double));
  if (c->mask && c->mask != 2) r.dm = calloc((size_t)nm, sizeof(double)), r.tm = calloc((size_t)nm, sizeof(double));
  double *got[4] = {0}, *gotl = NULL, *goto_ = NULL;
  zmlx_array *in[4] = {0}, *out = NULL, *lse = NULL, *ag = NULL, *agl = NULL;
  zmlx_status st = ZMLX_OK;
  int64_t qsh[4] = {c->B, c->layout ? c->Sq : c->Hq, c->layout ? c->Hq : c->Sq, c->D};
  int64_t ksh[4] = {c->B, c->layout ? c->Sk : c->Hkv, c->layout ? c->Hkv : c->Sk, c->D};
  int64_t rsh[3] = {c->B, c->Hq, c->Sq};
  if (!q || !k || !v || (c->mask && !m) || !g || !gl || !r.lse || !r.tl || !r.out || !r.dk) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "attention check: out of host memory");
    goto done;
  }
  st = zck_random(o->device, dt, 4, qsh, -2, 2, rng, q, &in[0]);
  if (st == ZMLX_OK) st = zck_random(o->device, dt, 4, ksh, -2, 2, rng, k, &in[1]);
  if (st == ZMLX_OK) st = zck_random(o->device, dt, 4, ksh, -1, 1, rng, v, &in[2]);
  if (st == ZMLX_OK && c->mask) {
    for (int64_t i = 0; i < nm; i++) {
      const double u = zck_uniform(rng, 0, 1);
      if (c->mask == 2) m[i] = u < 0.75;
      else m[i] = u < 0.1 ? -INFINITY : zck_round(dt, 2 * u - 1);
    }
    if (c->dead_row) /* query row 0 sees no key */
      for (int64_t j = 0; j < c->Sk; j++) m[j] = c->mask == 2 ? 0 : -INFINITY;
    st = zck_upload(o->device, c->mask == 2 ? ZMLX_BOOL : dt, mnd, msh, m, &in[3]);
  }
  if (st != ZMLX_OK) goto done;
  const int nin = c->mask ? 4 : 3;
  zmlx_attention_opts ao = {.struct_size = sizeof ao, .layout = c->layout, .causal = c->causal,
                            .mask = in[3]};
  attn_cfg cfg;
  st = zmlxi_attention_validate(in[0], in[1], in[2], &ao, &cfg);
  /* forward into poisoned outputs */
  if (st == ZMLX_OK) st = zmlx_array_full(o->device, dt, 4, qsh, NAN, &out);
  if (st == ZMLX_OK) st = zmlx_array_full(o->device, ZMLX_F32, 3, rsh, NAN, &lse);
  if (st == ZMLX_OK) st = zmlxi_attention_forward_into(in[0], in[1], in[2], &cfg, out, lse);
  if (st == ZMLX_OK) st = zck_download(out, &goto_);
  if (st == ZMLX_OK) st = zck_download(lse, &gotl);
  if (st != ZMLX_OK) goto done;
  for (int64_t i = 0; i < nq; i++) g[i] = zck_round(dt, zck_uniform(rng, -1, 1));
  for (int64_t i = 0; i < nrows; i++) gl[i] = zck_uniform(rng, -1, 1);
  reference(c, cfg.scale, q, k, v, m, grads ? g : NULL, grads ? gl : NULL, &r);
  {
    double e, t;
    zck_bound b = zck_bound_sum(ZCK_TOL_ROW, dt, c->D + c->Sk);
    /* 16-bit inputs: P is rounded to the dtype before P V (as the matrix
     * units take it, and as FlashAttention does): u(dt) per unit of the terms */
    if (dt != ZMLX_F32) b.atol += zck_unit_roundoff(dt);
    int ok = zck_within_scaled(goto_, r.out, r.to, nq, b, &e, &t);
    zck_bound bl = zck_bound_sum(ZCK_TOL_ROW, ZMLX_F32, c->D + c->Sk);
    ok = zck_within_acc(gotl, r.lse, r.tl, nrows, bl, &e, &t) && ok;
    zck_emit(o, "attention", "fwd out, lse", dt, name, e, t, ok);
  }
  if (!grads) goto done;
  st = zck_upload(o->device, dt, 4, qsh, g, &ag);
  if (st == ZMLX_OK) st = zck_upload(o->device, ZMLX_F32, 3, rsh, gl, &agl);
  if (st == ZMLX_OK) st = run_vjp(o, c, in, nin, ao, ag, agl, got);
  if (st != ZMLX_OK) goto done;
  {
    /* the backward starts from the stored out (rounded to the dtype) and
     * rounds each gradient once: u(dt) per unit of the terms as well */
    double e, t;
    zck_bound b = zck_bound_sum(ZCK_TOL_ROW, dt, c->D + c->Sk);
    b.atol += 2 * zck_unit_roundoff(dt);
    zck_within_scaled(got[0], r.dq, r.tq, nq, b, &e, &t);
    zck_within_acc(got[1], r.dk, r.tk, nk, b, &e, &t);
    int ok = zck_within_acc(got[2], r.dv, r.tv, nk, b, &e, &t);
    if (r.dm) ok = zck_within_acc(got[3], r.dm, r.tm, nm, b, &e, &t);
    zck_emit(o, "attention", r.dm ? "vjp q, k, v, mask" : "vjp q, k, v", dt, name, e, t, ok);
  }
done:
  if (st != ZMLX_OK) zck_emit_fail(o, "attention", grads ? "fwd + vjp" : "fwd", dt, name, st);
  free(q); free(k); free(v); free(m); free(g); free(gl); free(gotl); free(goto_);
  for (int i = 0; i < 4; i++) free(*slots[i]), free(*kslots[i]), free(got[i]);
  free(r.lse); free(r.tl); free(r.dm); free(r.tm);
  for (int i = 0; i < 4; i++) zmlx_array_release(in[i]);
  zmlx_array_release(out); zmlx_array_release(lse); zmlx_array_release(ag); zmlx_array_release(agl);
  zmlx_clear_error();
}

/* f32 central differences through sum(out * w) + sum(lse * wl). */
static void attn_fd(const zmlx_check_opts *o, const attn_case *c, uint64_t *rng) {
  char name[96];
  case_name(c, name, sizeof name);
  int64_t qsh[4] = {c->B, c->Hq, c->Sq, c->D}, ksh[4] = {c->B, c->Hkv, c->Sk, c->D};
  int64_t rsh[3] = {c->B, c->Hq, c->Sq}, msh[2] = {c->Sq, c->Sk};
  int64_t nq = c->B * c->Hq * c->Sq * c->D, nk = c->B * c->Hkv * c->Sk * c->D;
  double *buf = malloc(sizeof(double) * (size_t)(nq + 2 * nk + c->Sq * c->Sk + nq + c->B * c->Hq * c->Sq));
  zmlx_array *in[4] = {0}, *w = NULL, *wl = NULL;
  zmlx_status st = buf ? ZMLX_OK : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  if (st == ZMLX_OK) st = zck_random(o->device, ZMLX_F32, 4, qsh, -1, 1, rng, buf, &in[0]);
  if (st == ZMLX_OK) st = zck_random(o->device, ZMLX_F32, 4, ksh, -1, 1, rng, buf, &in[1]);
  if (st == ZMLX_OK) st = zck_random(o->device, ZMLX_F32, 4, ksh, -1, 1, rng, buf, &in[2]);
  if (st == ZMLX_OK) st = zck_random(o->device, ZMLX_F32, 2, msh, -1, 1, rng, buf, &in[3]);
  if (st == ZMLX_OK) st = zck_random(o->device, ZMLX_F32, 4, qsh, -1, 1, rng, buf, &w);
  if (st == ZMLX_OK) st = zck_random(o->device, ZMLX_F32, 3, rsh, -1, 1, rng, buf, &wl);
  if (st == ZMLX_OK) {
    attn_fn_data f = {{.struct_size = sizeof f.o, .causal = c->causal}, w, wl};
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(attn_fn, &f, in, 4, 1e-3, zck_fd_tol(), &rep);
    if (st == ZMLX_OK) {
      double e = 0;
      for (int i = 0; i < 4; i++) e = fmax(e, rep.inputs[i].max_abs_err);
      zck_emit(o, "attention", "grad (fd) q, k, v, mask", ZMLX_F32, name, e, zck_fd_tol(), rep.passed);
    }
  }
  if (st != ZMLX_OK) zck_emit_fail(o, "attention", "grad (fd)", ZMLX_F32, name, st);
  free(buf);
  for (int i = 0; i < 4; i++) zmlx_array_release(in[i]);
  zmlx_array_release(w);
  zmlx_array_release(wl);
  zmlx_clear_error();
}

static zmlx_status make(zmlx_device *dev, zmlx_dtype dt, int64_t a, int64_t b, int64_t c, int64_t d,
                        zmlx_array **out) {
  int64_t sh[4] = {a, b, c, d};
  return zmlx_array_zeros(dev, dt, 4, sh, out);
}

static void attn_bad(const zmlx_check_opts *o) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  zmlx_array *q = NULL, *k = NULL, *v = NULL, *k2 = NULL, *k3 = NULL, *q300 = NULL, *m = NULL,
             *vi = NULL, *y = NULL;
  int64_t msh[2] = {5, 7};
  zmlx_status st = make(dev, dt, 2, 4, 6, 16, &q);
  if (st == ZMLX_OK) st = make(dev, dt, 2, 2, 7, 16, &k);
  if (st == ZMLX_OK) st = make(dev, dt, 2, 2, 7, 16, &v);
  if (st == ZMLX_OK) st = make(dev, dt, 2, 2, 7, 8, &k2);   /* head_dim 8 != 16 */
  if (st == ZMLX_OK) st = make(dev, dt, 2, 3, 7, 16, &k3);  /* 3 kv heads, 4 q heads */
  if (st == ZMLX_OK) st = make(dev, dt, 1, 1, 2, 300, &q300);
  if (st == ZMLX_OK) st = zmlx_array_zeros(dev, dt, 2, msh, &m);
  if (st == ZMLX_OK) st = make(dev, ZMLX_I32, 2, 2, 7, 16, &vi);
  if (st != ZMLX_OK) {
    zck_emit_fail(o, "attention", "bad input", dt, "setup", st);
    goto done;
  }
  zmlx_attention_opts mo = {.mask = m};
  zck_expect(o, "attention", "q, k head_dim differ", zmlx_attention(q, k2, v, NULL, &y, NULL), y,
             ZMLX_ERR_SHAPE, "[2, 2, 7, 8]");
  y = NULL;
  zck_expect(o, "attention", "v not k's shape", zmlx_attention(q, k, k2, NULL, &y, NULL), y,
             ZMLX_ERR_SHAPE, "[2, 2, 7, 8]");
  y = NULL;
  zck_expect(o, "attention", "kv heads do not divide", zmlx_attention(q, k3, k3, NULL, &y, NULL), y,
             ZMLX_ERR_SHAPE, "kv heads 3");
  y = NULL;
  zck_expect(o, "attention", "head_dim 300", zmlx_attention(q300, q300, q300, NULL, &y, NULL), y,
             ZMLX_ERR_UNSUPPORTED, "head_dim 300");
  y = NULL;
  zck_expect(o, "attention", "mask shape", zmlx_attention(q, k, v, &mo, &y, NULL), y,
             ZMLX_ERR_SHAPE, "[5, 7]");
  y = NULL;
  zck_expect(o, "attention", "dtype mix", zmlx_attention(q, k, vi, NULL, &y, NULL), y,
             ZMLX_ERR_DTYPE, "i32");
  y = NULL;
  zmlx_attention_opts old = {.struct_size = 8};
  zck_expect(o, "attention", "struct_size", zmlx_attention(q, k, v, &old, &y, NULL), y,
             ZMLX_ERR_INVALID_ARG, "struct_size");
  y = NULL;
  zck_expect(o, "attention", "NULL q", zmlx_attention(NULL, k, v, NULL, &y, NULL), y,
             ZMLX_ERR_NULL_ARG, "q");
done:
  zmlx_array_release(q); zmlx_array_release(k); zmlx_array_release(v); zmlx_array_release(k2);
  zmlx_array_release(k3); zmlx_array_release(q300); zmlx_array_release(m); zmlx_array_release(vi);
  zmlx_clear_error();
}

static zmlx_status check_attention(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 1009u;
  /* sequence edges, bhsd, D 64, grads */
  static const int64_t QS[] = {1, 2, 15, 16, 17};
  static const int64_t FS[] = {1, 2, 15, 16, 17, 127, 300};
  const int64_t *ss = o->quick ? QS : FS;
  int ns = o->quick ? 5 : 7;
  for (int i = 0; i < ns; i++) {
    attn_case c = {1, 2, 2, ss[i], ss[i], 64, 0, 1, 0, 0};
    attn_case_run(o, &c, ss[i] <= 17 || !o->quick, &rng);
  }
  /* q_len != kv_len, bottom-right causal; GQA; MQA; bshd */
  attn_case gqa = {2, 4, 2, 5, 17, 32, 0, 1, 0, 0};
  attn_case_run(o, &gqa, 1, &rng);
  attn_case mqa = {1, 4, 1, 9, 9, 16, 1, 0, 0, 0};
  attn_case_run(o, &mqa, 1, &rng);
  attn_case decode = {2, 2, 2, 1, 33, 64, 1, 1, 0, 0}; /* one new token against a cache */
  attn_case_run(o, &decode, 1, &rng);
  /* masks (additive with -inf entries, bool, per head), fully masked rows */
  attn_case add = {2, 2, 2, 7, 11, 16, 0, 0, 1, 1};
  attn_case_run(o, &add, 1, &rng);
  attn_case boolm = {2, 2, 1, 6, 6, 16, 1, 1, 2, 1};
  attn_case_run(o, &boolm, 1, &rng);
  attn_case head = {1, 3, 3, 4, 9, 8, 0, 0, 3, 0};
  attn_case_run(o, &head, 1, &rng);
  /* several query tiles (64 rows) and key tiles (64, or 32 at head_dim
   * 256) of the tiled forward: q_len < kv_len with GQA; q_len > kv_len, the
   * first rows seeing no key under causality; masks across tiles */
  static const attn_case TILES[] = {{2, 4, 1, 70, 150, 64, 1, 1, 0, 0},
                                    {1, 2, 2, 130, 40, 32, 0, 1, 0, 0},
                                    {1, 2, 1, 65, 97, 256, 0, 1, 0, 0},
                                    {2, 2, 2, 80, 130, 16, 0, 0, 3, 0},
                                    {1, 2, 1, 65, 97, 256, 0, 0, 2, 1},
                                    {2, 2, 2, 80, 130, 16, 0, 1, 3, 0}};
  /* the quick check keeps to kernel variants the other cases compile too
   * (each new one is seconds of PoCL compilation in CI) */
  for (int i = 0; i < (o->quick ? 4 : 6); i++) attn_case_run(o, &TILES[i], !o->quick, &rng);
  /* every head_dim the issue names */
  static const int64_t DS[] = {64, 80, 96, 128, 256};
  for (int i = 0; i < 5; i++) {
    attn_case c = {1, 2, 1, 5, 7, DS[i], i % 2, 1, 0, 0};
    attn_case_run(o, &c, !o->quick || DS[i] == 64 || DS[i] == 128, &rng);
  }
  if (o->dtype == ZMLX_F32) {
    attn_case fd = {1, 2, 1, 3, 4, 4, 0, 1, 0, 0};
    attn_fd(o, &fd, &rng);
  }
  attn_bad(o);
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_attention_ops[] = {
    {"attention", check_attention},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct attn_bench {
  zmlx_array *q, *k, *v, *g;
  zmlx_attention_opts o;
} attn_bench;

static zmlx_status attn_bench_fwd(void *p) {
  attn_bench *c = p;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_attention(c->q, c->k, c->v, &c->o, &y, NULL);
  zmlx_array_release(y);
  return st;
}

static zmlx_status attn_bench_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  attn_bench *c = ud;
  return zmlx_attention(in[0], in[1], in[2], &c->o, out, NULL);
}

static zmlx_status attn_bench_fwd_bwd(void *p) {
  attn_bench *c = p;
  zmlx_array *in[3] = {c->q, c->k, c->v}, *y = NULL, *g[3] = {0};
  int argn[3] = {0, 1, 2};
  zmlx_status st = zmlx_vjp(attn_bench_fn, c, in, 3, argn, 3, c->g, &y, g);
  zmlx_array_release(y);
  for (int i = 0; i < 3; i++) zmlx_array_release(g[i]);
  return st;
}

/* Causal bf16 attention at batch 4, 32 heads, seq 4096, head_dim 128 (the
 * issue's shape; seq 256 and batch 1 on a CPU device, so a run takes
 * seconds). FLOPs: 2 S^2 D per head for the two products, halved by the
 * causal mask; the backward does 2.5 times the forward's (FlashAttention's
 * count). */
static zmlx_status bench_attention(const zmlx_bench_opts *o) {
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(o->device, &info));
  const int64_t B = info.is_cpu ? 1 : 4, H = 32, S = info.is_cpu ? 256 : 4096, D = 128;
  int64_t shape[4] = {B, H, S, D};
  attn_bench c;
  memset(&c, 0, sizeof c);
  c.o.struct_size = sizeof c.o;
  c.o.causal = 1;
  zmlx_status st = zck_bench_random(o->device, ZMLX_BF16, 4, shape, 41, &c.q);
  if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 4, shape, 42, &c.k);
  if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 4, shape, 43, &c.v);
  if (st == ZMLX_OK) st = zck_bench_random(o->device, ZMLX_BF16, 4, shape, 44, &c.g);
  const double n = (double)B * H * S * D, fwd = 2.0 * (double)B * H * S * S * D;
  if (st == ZMLX_OK)
    st = zck_bench_time_emit_flops(o, "attention_causal", ZMLX_BF16, 4, shape, 4 * 2 * n, fwd,
                                   attn_bench_fwd, &c);
  if (st == ZMLX_OK)
    st = zck_bench_time_emit_flops(o, "attention_causal_fwd_bwd", ZMLX_BF16, 4, shape, 9 * 2 * n,
                                   3.5 * fwd, attn_bench_fwd_bwd, &c);
  zmlx_array_release(c.q);
  zmlx_array_release(c.k);
  zmlx_array_release(c.v);
  zmlx_array_release(c.g);
  return st;
}

const zmlx_catalog_bench zck_catalog_attention_bench[] = {
    {"attention", bench_attention},
    {0},
};
