/* `zmlx check` and `zmlx bench` cases of src/ops/quant.c: forward against
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
#include "runtime/internal.h"
#include "check/check_util.h"
#include "ops/quant.h"

/* ================================================================ checks */

typedef struct qcase {
  int ndim;
  int64_t shape[3]; /* the float side: [..., cols] */
  int group;        /* int4 */
  int view;         /* dequantize: q starts `view` bytes into its buffer;
                       quantize: x is a column-strided view */
} qcase;

static int64_t qc_total(const qcase *c) {
  int64_t n = 1;
  for (int i = 0; i < c->ndim; i++) n *= c->shape[i];
  return n;
}

/* The scales' dtype of case i of a case list: the check's dtype, f32 for
 * the last case (one more kernel variant to compile, not one per case). */
#define SDT(i, list) ((i) + 1 == sizeof list / sizeof *list ? ZMLX_F32 : o->dtype)

static void qc_name(char *buf, size_t cap, const qcase *c, int mode, zmlx_dtype sdt,
                    const char *extra) {
  char s[64];
  zmlxi_shape_str(s, sizeof s, c->ndim, c->shape);
  if (mode == 4)
    snprintf(buf, cap, "%s g%d scales %s%s%s", s, c->group, zmlx_dtype_name(sdt),
             c->view ? " view" : "", extra ? extra : "");
  else
    snprintf(buf, cap, "%s scales %s%s%s", s, zmlx_dtype_name(sdt), c->view ? " view" : "",
             extra ? extra : "");

}

/* Shape of the scales of a case: [...] (int8) or [..., cols / group]. */
static int qc_scale_shape(const qcase *c, int mode, int64_t *sh) {
  for (int i = 0; i < c->ndim - 1; i++) sh[i] = c->shape[i];
  if (mode == 8) return c->ndim - 1;
  sh[c->ndim - 1] = c->shape[c->ndim - 1] / c->group;
  return c->ndim;
}

/* An array of `shape` whose every byte is `byte` (0: zeros; 0xFF: NaN in
 * f32, f16 and bf16; 0x63: 99 in i8 / u8), made on the host: no fill
 * kernel to compile per dtype, which keeps the quick check quick. */
static zmlx_status qc_bytes(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                            int byte, zmlx_array **out) {
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  size_t nb = (size_t)n * zmlx_dtype_size(dt);
  void *h = malloc(nb ? nb : 1);
  if (!h) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  memset(h, byte, nb);
  zmlx_status st = zmlx_array_from_host(dev, dt, ndim, shape, h, out);
  free(h);
  return st;
}

/* Uploads host bytes as an integer array of `shape`; with pad > 0, as a
 * dense view that starts `pad` bytes into its buffer (a 1-D upload sliced
 * and reshaped), so the kernels' alignment fallbacks get exercised. */
static zmlx_status qc_upload_ints(zmlx_device *dev, zmlx_dtype dt, int ndim, const int64_t *shape,
                                  const uint8_t *bytes, int pad, zmlx_array **out) {
  if (!pad) return zmlx_array_from_host(dev, dt, ndim, shape, bytes, out);
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= shape[i];
  int64_t big = n + pad, start = pad, stop = n + pad;
  uint8_t *h = malloc((size_t)big);
  if (!h) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  memset(h, 0x5A, (size_t)pad);
  memcpy(h + pad, bytes, (size_t)n);
  zmlx_array *a = NULL, *v = NULL;
  zmlx_status st = zmlx_array_from_host(dev, dt, 1, &big, h, &a);
  free(h);
  if (st == ZMLX_OK) st = zmlx_array_slice(a, &start, &stop, NULL, &v);
  if (st == ZMLX_OK) st = zmlx_array_reshape(v, ndim, shape, out);
  zmlx_array_release(a);
  zmlx_array_release(v);
  return st;
}

static double silu_ref(double w, double *d) {
  double s = 1 / (1 + exp(-w));
  if (d) *d = s * (1 + w * (1 - s));
  return w * s;
}

/* Random integers of a case: int8 in [-qmax-1, qmax] (qmax <= 127), int4
 * nibbles in [0, 15] packed low nibble first. */
static void qc_random_ints(int mode, int64_t total, int qmax, uint64_t *rng, int *qv,
                           uint8_t *bytes) {
  for (int64_t i = 0; i < total; i++) {
    double u = zck_uniform(rng, 0, 1);
    if (mode == 8) {
      int v = (int)floor(u * (2 * qmax + 2)) - qmax - 1;
      if (v > qmax) v = qmax;
      qv[i] = v;
      bytes[i] = (uint8_t)(int8_t)v;
    } else {
      int v = (int)floor(u * 16);
      if (v > 15) v = 15;
      qv[i] = v;
      if (i % 2 == 0) bytes[i / 2] = (uint8_t)v;
      else bytes[i / 2] |= (uint8_t)(v << 4);
    }
  }
}

/* ------------------------------------------------------- dequantize fwd */

static void dq_case(const zmlx_check_opts *o, const char *op, int mode, zmlx_quant_act act,
                    const qcase *c, zmlx_dtype sdt, uint64_t *rng) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  char name[96];
  char off[24] = "";
  if (c->view) snprintf(off, sizeof off, " +%dB", c->view); /* q's byte offset */
  qc_name(name, sizeof name, c, mode, sdt, off);
  const int64_t total = qc_total(c), cols = c->shape[c->ndim - 1];
  int64_t ssh[ZMLX_MAX_DIMS], qsh[ZMLX_MAX_DIMS];
  const int snd = qc_scale_shape(c, mode, ssh);
  int64_t ns = 1;
  for (int i = 0; i < snd; i++) ns *= ssh[i];
  for (int i = 0; i < c->ndim; i++) qsh[i] = c->shape[i];
  if (mode == 4) qsh[c->ndim - 1] /= 2;
  int *qv = malloc(sizeof(int) * (size_t)total);
  uint8_t *bytes = calloc((size_t)total + 1, 1);
  double *sv = malloc(sizeof(double) * (size_t)(ns + 1));
  double *bv = malloc(sizeof(double) * (size_t)(ns + 1));
  double *want = malloc(sizeof(double) * (size_t)total), *got = NULL;
  zmlx_array *q = NULL, *s = NULL, *b = NULL, *y = NULL;
  zmlx_status st = ZMLX_OK;
  if (!qv || !bytes || !sv || !bv || !want) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  qc_random_ints(mode, total, 127, rng, qv, bytes);
  st = qc_upload_ints(dev, mode == 8 ? ZMLX_I8 : ZMLX_U8, c->ndim, qsh, bytes, c->view, &q);
  if (st == ZMLX_OK)
    st = mode == 8 ? zck_random(dev, sdt, snd, ssh, -0.03, 0.03, rng, sv, &s)
                   : zck_random(dev, sdt, snd, ssh, 0.02, 0.3, rng, sv, &s);
  if (st == ZMLX_OK && mode == 4) st = zck_random(dev, sdt, snd, ssh, -2, 1, rng, bv, &b);
  if (st == ZMLX_OK) st = qc_bytes(dev, dt, c->ndim, c->shape, 0xFF, &y);
  if (st == ZMLX_OK)
    st = mode == 8 ? zmlxi_dequantize_int8_validate(op, q, s, dt, act)
                   : zmlxi_dequantize_int4_validate(op, q, s, b, c->group, dt, act);
  if (st == ZMLX_OK) st = zmlxi_dequantize_launch(mode, q, s, b, c->group, act, y);
  if (st == ZMLX_OK) st = zck_download(y, &got);
  if (st != ZMLX_OK) goto done;
  {
    /* w = s q (+ b) in f32, its terms of size |s q| + |b| (the bias may
     * cancel the product); silu's error follows w */
    double *terms = malloc(sizeof(double) * (size_t)total), e, tol;
    if (!terms) {
      st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
      goto done;
    }
    for (int64_t i = 0; i < total; i++) {
      double sq = mode == 8 ? sv[i / cols] * qv[i] : sv[i / c->group] * qv[i];
      double w = mode == 8 ? sq : sq + bv[i / c->group];
      want[i] = act == ZMLX_QUANT_SILU ? silu_ref(w, NULL) : w;
      terms[i] = fabs(sq) + (mode == 8 ? 0 : fabs(bv[i / c->group]));
    }
    int ok = zck_within_scaled(got, want, terms, total, zck_bound_sum(ZCK_TOL_ELEMENTWISE, dt, 1),
                               &e, &tol);
    free(terms);
    zck_emit(o, op, "fwd", dt, name, e, tol, ok);
  }
done:
  if (st != ZMLX_OK) zck_emit_fail(o, op, "fwd", dt, name, st);
  free(qv); free(bytes); free(sv); free(bv); free(want); free(got);
  zmlx_array_release(q); zmlx_array_release(s); zmlx_array_release(b); zmlx_array_release(y);
  zmlx_clear_error();
}

/* ------------------------------------------------------ dequantize grad */

typedef struct dq_gctx {
  int mode, group;
  zmlx_quant_act act;
  zmlx_dtype odt;
  zmlx_array *q, *w; /* w NULL: the function returns the dequantized array */
} dq_gctx;

static zmlx_status dq_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  dq_gctx *g = ud;
  zmlx_array *y = NULL;
  ZMLX_CHECK(g->mode == 8 ? zmlx_dequantize_int8_rows(g->q, in[0], g->odt, g->act, &y)
                          : zmlx_dequantize_int4(g->q, in[0], in[1], g->group, g->odt, g->act, &y));
  if (!g->w) {
    *out = y;
    return ZMLX_OK;
  }
  zmlx_status st = zck_weighted_sum(y, g->w, out);
  zmlx_array_release(y);
  return st;
}

/* fd 0: VJP (scales, biases) against the f64 reference; 1: f32 finite
 * differences (zmlx_check_grad: VJP of each input and the JVP). */
static void dq_grad_case(const zmlx_check_opts *o, const char *op, int mode, zmlx_quant_act act,
                         const qcase *c, int fd, uint64_t *rng) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = fd ? ZMLX_F32 : o->dtype;
  const char *what = fd ? "grad (fd)" : "grad (vjp)";
  char name[96];
  qc_name(name, sizeof name, c, mode, dt, NULL);
  const int64_t total = qc_total(c), cols = c->shape[c->ndim - 1];
  int64_t ssh[ZMLX_MAX_DIMS], qsh[ZMLX_MAX_DIMS];
  const int snd = qc_scale_shape(c, mode, ssh);
  int64_t ns = 1;
  for (int i = 0; i < snd; i++) ns *= ssh[i];
  for (int i = 0; i < c->ndim; i++) qsh[i] = c->shape[i];
  if (mode == 4) qsh[c->ndim - 1] /= 2;
  const int nin = mode == 4 ? 2 : 1;
  int *qv = malloc(sizeof(int) * (size_t)total);
  uint8_t *bytes = calloc((size_t)total + 1, 1);
  double *sv = malloc(sizeof(double) * (size_t)ns), *bv = malloc(sizeof(double) * (size_t)ns);
  double *gv = malloc(sizeof(double) * (size_t)total);
  double *ws = calloc((size_t)ns, sizeof(double)), *wb = calloc((size_t)ns, sizeof(double));
  double *ts = calloc((size_t)ns, sizeof(double)), *tb = calloc((size_t)ns, sizeof(double));
  double *got_s = NULL, *got_b = NULL;
  zmlx_array *q = NULL, *in[2] = {NULL, NULL}, *g = NULL, *y = NULL, *grads[2] = {NULL, NULL};
  zmlx_status st = ZMLX_OK;
  if (!qv || !bytes || !sv || !bv || !gv || !ws || !wb || !ts || !tb) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  /* finite differences: small integers keep w = q s near 1 (silu curvature) */
  qc_random_ints(mode, total, fd ? 8 : 127, rng, qv, bytes);
  st = zmlx_array_from_host(dev, mode == 8 ? ZMLX_I8 : ZMLX_U8, c->ndim, qsh, bytes, &q);
  if (st == ZMLX_OK)
    st = mode == 8 ? zck_random(dev, dt, snd, ssh, -0.03 * (fd ? 4 : 1), 0.03 * (fd ? 4 : 1),
                                    rng, sv, &in[0])
                   : zck_random(dev, dt, snd, ssh, 0.02, 0.3, rng, sv, &in[0]);
  if (st == ZMLX_OK && mode == 4) st = zck_random(dev, dt, snd, ssh, -2, 1, rng, bv, &in[1]);
  if (st == ZMLX_OK) st = zck_random(dev, dt, c->ndim, c->shape, -1, 1, rng, gv, &g);
  if (st != ZMLX_OK) goto done;
  if (fd) {
    dq_gctx gc = {mode, c->group, act, dt, q, g};
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(dq_fn, &gc, in, nin, 1e-3, zck_fd_tol(), &rep);
    if (st != ZMLX_OK) goto done;
    double e = 0;
    for (int i = 0; i < nin; i++) e = fmax(e, rep.inputs[i].max_abs_err);
    if (rep.jvp_checked) e = fmax(e, rep.jvp_abs_err);
    int pass = rep.passed && rep.jvp_checked;
    zck_emit(o, op, what, dt, name, e, zck_fd_tol(), pass);
  } else {
    dq_gctx gc = {mode, c->group, act, dt, q, NULL};
    int argn[2] = {0, 1};
    st = zmlx_vjp(dq_fn, &gc, in, nin, argn, nin, g, &y, grads);
    if (st == ZMLX_OK) st = zck_download(grads[0], &got_s);
    if (st == ZMLX_OK && mode == 4) st = zck_download(grads[1], &got_b);
    if (st != ZMLX_OK) goto done;
    for (int64_t i = 0; i < total; i++) {
      int64_t k = mode == 8 ? i / cols : i / c->group;
      double w = mode == 8 ? sv[k] * qv[i] : sv[k] * qv[i] + bv[k], d = 1;
      if (act == ZMLX_QUANT_SILU) silu_ref(w, &d);
      ws[k] += gv[i] * d * qv[i];
      wb[k] += gv[i] * d;
      ts[k] += fabs(gv[i] * d * qv[i]); /* sums of terms of either sign */
      tb[k] += fabs(gv[i] * d);
    }
    /* each scale (bias) gradient sums a group's (a row's) terms */
    zck_bound bnd = zck_bound_sum(ZCK_TOL_ELEMENTWISE, dt, mode == 8 ? cols : c->group);
    double e, tol;
    int ok = zck_within_scaled(got_s, ws, ts, ns, bnd, &e, &tol);
    if (mode == 4) ok = zck_within_acc(got_b, wb, tb, ns, bnd, &e, &tol);
    zck_emit(o, op, what, dt, name, e, tol, ok);
  }
done:
  if (st != ZMLX_OK) zck_emit_fail(o, op, what, dt, name, st);
  free(qv); free(bytes); free(sv); free(bv); free(gv); free(ws); free(wb); free(ts); free(tb);
  free(got_s); free(got_b);
  zmlx_array_release(q); zmlx_array_release(in[0]); zmlx_array_release(in[1]);
  zmlx_array_release(g); zmlx_array_release(y);
  zmlx_array_release(grads[0]); zmlx_array_release(grads[1]);
  zmlx_clear_error();
}

/* ------------------------------------------------------- dequantize bad */

static void dq_bad(const zmlx_check_opts *o, const char *op, int mode, zmlx_quant_act act) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  zmlx_array *q8 = NULL, *u8 = NULL, *u8odd = NULL, *s3 = NULL, *s4 = NULL, *s22 = NULL,
             *s23 = NULL, *s21 = NULL, *si = NULL, *sc = NULL, *y = NULL;
  int64_t sh34[2] = {3, 4}, sh3[1] = {3}, sh4[1] = {4}, sh2_32[2] = {2, 32}, sh2_24[2] = {2, 24};
  int64_t sh22[2] = {2, 2}, sh23[2] = {2, 3}, sh21[2] = {2, 1};
  if (qc_bytes(dev, ZMLX_I8, 2, sh34, 0, &q8) ||
      qc_bytes(dev, ZMLX_U8, 2, sh2_32, 0, &u8) ||
      qc_bytes(dev, ZMLX_U8, 2, sh2_24, 0, &u8odd) ||
      qc_bytes(dev, dt, 1, sh3, 0, &s3) || qc_bytes(dev, dt, 1, sh4, 0, &s4) ||
      qc_bytes(dev, dt, 2, sh22, 0, &s22) || qc_bytes(dev, dt, 2, sh23, 0, &s23) ||
      qc_bytes(dev, dt, 2, sh21, 0, &s21) || qc_bytes(dev, ZMLX_I32, 1, sh3, 0, &si) ||
      qc_bytes(dev, ZMLX_I8, 0, NULL, 0, &sc)) {
    zck_emit_fail(o, op, "bad input", dt, "setup", ZMLX_ERR_BACKEND);
    goto done;
  }
#define EXPECT(what, call, want, needle)                     \
  do {                                                       \
    y = NULL;                                                \
    zck_expect(o, op, what, call, y, want, needle);      \
  } while (0)
  if (mode == 8) {
    EXPECT("bad: NULL q", zmlx_dequantize_int8_rows(NULL, s3, dt, act, &y), ZMLX_ERR_NULL_ARG,
           "'q'");
    EXPECT("bad: q u8", zmlx_dequantize_int8_rows(u8, s3, dt, act, &y), ZMLX_ERR_DTYPE, "i8");
    EXPECT("bad: q scalar", zmlx_dequantize_int8_rows(sc, s3, dt, act, &y), ZMLX_ERR_SHAPE,
           "rank");
    EXPECT("bad: scales [4] for q [3, 4]", zmlx_dequantize_int8_rows(q8, s4, dt, act, &y),
           ZMLX_ERR_SHAPE, "scales has shape [4] but must be [3]");
    EXPECT("bad: scales i32", zmlx_dequantize_int8_rows(q8, si, dt, act, &y), ZMLX_ERR_DTYPE,
           "scales");
    EXPECT("bad: out_dtype i32", zmlx_dequantize_int8_rows(q8, s3, ZMLX_I32, act, &y),
           ZMLX_ERR_DTYPE, "out_dtype");
    EXPECT("bad: act 7", zmlx_dequantize_int8_rows(q8, s3, dt, (zmlx_quant_act)7, &y),
           ZMLX_ERR_INVALID_ARG, "act");
  } else {
    EXPECT("bad: packed i8", zmlx_dequantize_int4(q8, s22, s22, 32, dt, act, &y), ZMLX_ERR_DTYPE,
           "u8");
    EXPECT("bad: group 48", zmlx_dequantize_int4(u8, s22, s22, 48, dt, act, &y),
           ZMLX_ERR_INVALID_ARG, "group_size 48");
    EXPECT("bad: cols 48 % group 32", zmlx_dequantize_int4(u8odd, s22, s22, 32, dt, act, &y),
           ZMLX_ERR_SHAPE, "not a multiple of group_size 32");
    EXPECT("bad: scales [2, 3]", zmlx_dequantize_int4(u8, s23, s22, 32, dt, act, &y),
           ZMLX_ERR_SHAPE, "scales has shape [2, 3] but must be [2, 2]");
    EXPECT("bad: biases [2, 1]", zmlx_dequantize_int4(u8, s22, s21, 32, dt, act, &y),
           ZMLX_ERR_SHAPE, "biases has shape [2, 1]");
    EXPECT("bad: NULL biases", zmlx_dequantize_int4(u8, s22, NULL, 32, dt, act, &y),
           ZMLX_ERR_NULL_ARG, "'biases'");
    EXPECT("bad: act 7", zmlx_dequantize_int4(u8, s22, s22, 32, dt, (zmlx_quant_act)7, &y),
           ZMLX_ERR_INVALID_ARG, "act");
  }
#undef EXPECT
done:
  zmlx_array_release(q8); zmlx_array_release(u8); zmlx_array_release(u8odd);
  zmlx_array_release(s3); zmlx_array_release(s4); zmlx_array_release(s22);
  zmlx_array_release(s23); zmlx_array_release(s21); zmlx_array_release(si);
  zmlx_array_release(sc);
  zmlx_clear_error();
}

/* Integers get no gradient: asking for one is the autograd's dtype error. */
static void dq_grad_q_refused(const zmlx_check_opts *o, const char *op, int mode,
                              zmlx_quant_act act);

static zmlx_status dq_check(const zmlx_check_opts *o, const char *op, int mode,
                            zmlx_quant_act act) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x7175616EULL + (uint64_t)(mode * 2 + act);
  if (!rng) rng = 1;
  if (mode == 8) {
    static const qcase quick[] = {{2, {1, 64}, 0, 0}, {2, {3, 7}, 0, 0}, {2, {5, 1000}, 0, 0},
                                  {2, {2, 4096}, 0, 0}, {2, {4, 36}, 0, 36}, {3, {2, 3, 40}, 0, 0}};
    static const qcase full[] = {{2, {1, 1}, 0, 0}, {2, {17, 64}, 0, 0}, {2, {9, 1000}, 0, 3},
                                 {2, {64, 4096}, 0, 0}, {2, {2, 32768}, 0, 0},
                                 {2, {7, 4104}, 0, 8}, {2, {256, 1000}, 0, 0}};
    for (size_t i = 0; i < sizeof quick / sizeof *quick; i++)
      dq_case(o, op, 8, act, &quick[i], SDT(i, quick), &rng);
    if (!o->quick)
      for (size_t i = 0; i < sizeof full / sizeof *full; i++)
        dq_case(o, op, 8, act, &full[i], SDT(i, full), &rng);
    const qcase gv = {2, {3, 300}, 0, 0}, gf = {2, {3, 10}, 0, 0};
    dq_grad_case(o, op, 8, act, &gv, 0, &rng);
    if (o->dtype == ZMLX_F32) dq_grad_case(o, op, 8, act, &gf, 1, &rng);
  } else {
    static const qcase quick[] = {{2, {1, 64}, 32, 0}, {2, {3, 128}, 64, 0},
                                  {2, {2, 4096}, 128, 0}, {2, {5, 256}, 32, 1},
                                  {3, {2, 3, 128}, 64, 0}};
    static const qcase full[] = {{2, {1, 32768}, 64, 0}, {2, {64, 4096}, 32, 0},
                                 {2, {17, 1024}, 128, 24}, {2, {2, 32768}, 128, 0},
                                 {2, {33, 4096}, 64, 0}};
    for (size_t i = 0; i < sizeof quick / sizeof *quick; i++)
      dq_case(o, op, 4, act, &quick[i], SDT(i, quick), &rng);
    if (!o->quick)
      for (size_t i = 0; i < sizeof full / sizeof *full; i++)
        dq_case(o, op, 4, act, &full[i], SDT(i, full), &rng);
    const qcase gv = {2, {3, 128}, 32, 0}, gf = {2, {2, 64}, 32, 0};
    dq_grad_case(o, op, 4, act, &gv, 0, &rng);
    if (o->dtype == ZMLX_F32) dq_grad_case(o, op, 4, act, &gf, 1, &rng);
  }
  dq_grad_q_refused(o, op, mode, act);
  dq_bad(o, op, mode, act);
  return ZMLX_OK;
}

typedef struct dq_qctx {
  int mode;
  zmlx_quant_act act;
  zmlx_array *s;
} dq_qctx;

static zmlx_status dq_fn_q(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  dq_qctx *g = ud;
  zmlx_array *y = NULL;
  ZMLX_CHECK(g->mode == 8 ? zmlx_dequantize_int8_rows(in[0], g->s, ZMLX_F32, g->act, &y)
                          : zmlx_dequantize_int4(in[0], g->s, g->s, 32, ZMLX_F32, g->act, &y));
  zmlx_status st = zmlx_sum(y, NULL, 0, 0, out);
  zmlx_array_release(y);
  return st;
}

static void dq_grad_q_refused(const zmlx_check_opts *o, const char *op, int mode,
                              zmlx_quant_act act) {
  zmlx_array *q = NULL, *s = NULL, *gq = NULL;
  int64_t qsh[2] = {2, 32}, ssh8[1] = {2}, ssh4[2] = {2, 2};
  if (qc_bytes(o->device, mode == 8 ? ZMLX_I8 : ZMLX_U8, 2, qsh, 0, &q) != ZMLX_OK ||
      qc_bytes(o->device, ZMLX_F32, mode == 8 ? 1 : 2, mode == 8 ? ssh8 : ssh4, 0, &s) !=
          ZMLX_OK) {
    zck_emit_fail(o, op, "grad q", o->dtype, "setup", ZMLX_ERR_BACKEND);
  } else {
    dq_qctx c = {mode, act, s};
    int argn = 0;
    zmlx_status st = zmlx_grad(dq_fn_q, &c, &q, 1, &argn, 1, &gq);
    zck_expect(o, op, "bad: grad w.r.t. integer q", st, gq, ZMLX_ERR_DTYPE, "");
  }
  zmlx_array_release(q);
  zmlx_array_release(s);
  zmlx_clear_error();
}

static zmlx_status check_dequant_int8(const zmlx_check_opts *o) {
  return dq_check(o, "dequant_int8", 8, ZMLX_QUANT_NONE);
}
static zmlx_status check_dequant_int8_silu(const zmlx_check_opts *o) {
  return dq_check(o, "dequant_int8_silu", 8, ZMLX_QUANT_SILU);
}
static zmlx_status check_dequant_int4(const zmlx_check_opts *o) {
  return dq_check(o, "dequant_int4", 4, ZMLX_QUANT_NONE);
}
static zmlx_status check_dequant_int4_silu(const zmlx_check_opts *o) {
  return dq_check(o, "dequant_int4_silu", 4, ZMLX_QUANT_SILU);
}

/* --------------------------------------------------------------- quantize */

static float round_sdt(zmlx_dtype dt, float v) { return (float)zck_round(dt, v); }

/* Relative tolerance of a scale computed on two machines: the f32 division
 * may differ by an ulp or two, which rounding to the scales' dtype can turn
 * into one ulp of that dtype. */
static double scale_tol(zmlx_dtype sdt) {
  return sdt == ZMLX_F32 ? 5e-7 : sdt == ZMLX_F16 ? 1.5e-3 : 1e-2;
}

/* api 0: the kernel into poisoned outputs; 1: the public function (its
 * allocation and output shapes), then the same verification. exact_ties
 * (int8): every row's scale is a power of two (its amax is 127 * 2^e) and
 * every other value an exact k + 0.5 multiple of it, so the device's
 * quotient is exact and each one is a true tie, rounded away from zero
 * (no tie slack). */
static void q_case(const zmlx_check_opts *o, const char *op, int mode, const qcase *c,
                   zmlx_dtype sdt, int api, int exact_ties, uint64_t *rng) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  char name[96];
  qc_name(name, sizeof name, c, mode, sdt, api ? " (api)" : exact_ties ? " exact ties" : NULL);
  const int64_t total = qc_total(c), cols = c->shape[c->ndim - 1], rows = total / cols;
  const int64_t unit = mode == 8 ? cols : c->group, ns = total / unit;
  int64_t ssh[ZMLX_MAX_DIMS], qsh[ZMLX_MAX_DIMS];
  const int snd = qc_scale_shape(c, mode, ssh);
  for (int i = 0; i < c->ndim; i++) qsh[i] = c->shape[i];
  if (mode == 4) qsh[c->ndim - 1] /= 2;
  const int64_t nq = mode == 8 ? total : total / 2;
  double *xv = malloc(sizeof(double) * (size_t)total);
  double *sv = NULL, *bv = NULL;
  uint8_t *qb = malloc((size_t)nq + 1);
  zmlx_array *x = NULL, *q = NULL, *s = NULL, *b = NULL;
  zmlx_status st = ZMLX_OK;
  if (!xv || !qb) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  /* rows of different magnitudes, int4 rows off-centre; the first row of a
   * multi-row case is constant (int8: 0), the scale-0 path */
  for (int64_t r = 0; r < rows; r++) {
    double mag = pow(10, 2 * zck_uniform(rng, 0, 1) - 1);
    double off = mode == 4 ? mag * (2 * zck_uniform(rng, 0, 1) - 1) : 0;
    double cst = mode == 4 ? zck_round(dt, off) : 0;
    for (int64_t j = 0; j < cols; j++) {
      const double u = 2 * zck_uniform(rng, 0, 1) - 1;
      xv[r * cols + j] = r == 0 && rows > 2 ? cst : zck_round(dt, off + mag * u);
    }
  }
  if (exact_ties && mode == 8)
    for (int64_t r = 0; r < rows; r++) {
      const double scale = ldexp(1.0, (int)zck_uniform(rng, -3, 4)); /* 2^-3 .. 2^3 */
      for (int64_t j = 0; j < cols; j++) {
        const double k = floor(zck_uniform(rng, -127, 127)); /* k + 0.5 in -126.5 .. 126.5 */
        xv[r * cols + j] = j == 0 ? (r % 2 ? -127.0 : 127.0) * scale : (k + 0.5) * scale;
      }
    }
  {
    int64_t start[ZMLX_MAX_DIMS] = {0}, stop[ZMLX_MAX_DIMS], big[ZMLX_MAX_DIMS];
    zmlx_array *xb = NULL;
    for (int i = 0; i < c->ndim; i++) big[i] = stop[i] = c->shape[i];
    if (c->view) { /* a column-strided view: every other column of [.., 2 cols] */
      double *wide = malloc(sizeof(double) * (size_t)(2 * total));
      int64_t step[ZMLX_MAX_DIMS];
      for (int i = 0; i < c->ndim; i++) step[i] = 1;
      if (!wide) {
        st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
        goto done;
      }
      for (int64_t i = 0; i < total; i++) {
        wide[2 * i] = xv[i];
        wide[2 * i + 1] = 1e6;
      }
      big[c->ndim - 1] = stop[c->ndim - 1] = 2 * cols;
      step[c->ndim - 1] = 2;
      st = zck_upload(dev, dt, c->ndim, big, wide, &xb);
      free(wide);
      if (st == ZMLX_OK) st = zmlx_array_slice(xb, start, stop, step, &x);
      zmlx_array_release(xb);
    } else {
      st = zck_upload(dev, dt, c->ndim, big, xv, &x);
    }
  }
  if (st == ZMLX_OK && api) {
    st = mode == 8 ? zmlx_quantize_int8_rows(x, sdt, &q, &s)
                   : zmlx_quantize_int4(x, c->group, sdt, &q, &s, &b);
    if (st == ZMLX_OK &&
        (q->dtype != (mode == 8 ? ZMLX_I8 : ZMLX_U8) || s->dtype != sdt ||
         !zmlxi_ad_same_shape(q, c->ndim, qsh) || !zmlxi_ad_same_shape(s, snd, ssh) ||
         (mode == 4 && (b->dtype != sdt || !zmlxi_ad_same_shape(b, snd, ssh)))))
      st = zmlxi_fail(ZMLX_ERR_INTERNAL, "%s: outputs of the wrong shape or dtype", op);
  } else if (st == ZMLX_OK) {
    st = qc_bytes(dev, mode == 8 ? ZMLX_I8 : ZMLX_U8, c->ndim, qsh, 0x63, &q);
    if (st == ZMLX_OK) st = qc_bytes(dev, sdt, snd, ssh, 0xFF, &s);
    if (st == ZMLX_OK && mode == 4) st = qc_bytes(dev, sdt, snd, ssh, 0xFF, &b);
    if (st == ZMLX_OK) st = zmlxi_quantize_validate(op, mode, x, c->group, sdt);
    if (st == ZMLX_OK) st = zmlxi_quantize_launch(mode, x, c->group, q, s, b);
  }
  if (st == ZMLX_OK) st = zmlx_array_to_host(q, qb, (size_t)nq);
  if (st == ZMLX_OK) st = zck_download(s, &sv);
  if (st == ZMLX_OK && mode == 4) st = zck_download(b, &bv);
  if (st != ZMLX_OK) goto done;
  double serr = 0, rt = 0;
  int64_t mism = 0, ties = 0;
  for (int64_t k = 0; k < ns; k++) {
    const double *xs = xv + k * unit;
    float mn = INFINITY, mx = -INFINITY, amax = 0;
    for (int64_t j = 0; j < unit; j++) {
      mn = fminf(mn, (float)xs[j]);
      mx = fmaxf(mx, (float)xs[j]);
      amax = fmaxf(amax, fabsf((float)xs[j]));
    }
    /* the reference's scale and bias, in the kernel's f32 steps */
    float bref = mode == 4 ? round_sdt(sdt, mn) : 0.0f;
    float sref = mode == 4 ? round_sdt(sdt, fmaxf(mx - bref, 0.0f) / 15.0f)
                           : round_sdt(sdt, amax / 127.0f);
    const double sd = sv[k], bd = mode == 4 ? bv[k] : 0;
    double es = fabs(sd - sref) / fmax(fabs(sref), 1e-30);
    if (mode == 4) es = fmax(es, bd == bref ? 0 : 1); /* the bias is exact: min, rounded */
    if (!(es <= serr)) serr = es; /* NaN counts */
    /* integers against round((x - b) / s) on the device's scale and bias;
     * at a .5 tie (within the f32 error of the device's quotient) both
     * neighbours are accepted */
    const int qlo = mode == 8 ? -127 : 0, qhi = mode == 8 ? 127 : 15;
    double bound = 0.5 * fabs(sd);
    if (mode == 8) bound += fmax(0, amax - 127 * sd);
    else bound += fmax(0, bd - mn) + fmax(0, mx - (bd + 15 * sd));
    for (int64_t j = 0; j < unit; j++) {
      const int64_t i = k * unit + j;
      int qd = mode == 8 ? (int)(int8_t)qb[i] : (qb[i / 2] >> (4 * (i % 2))) & 15;
      double yq = sd > 0 ? (xs[j] - bd) / sd : 0;
      int qr = (int)fmin(fmax(round(yq), qlo), qhi);
      double frac = yq - floor(yq);
      int tie = !exact_ties && fabs(frac - 0.5) < 1e-4;
      if (qd != qr) {
        if (tie && abs(qd - qr) == 1) ties++;
        else mism++;
      }
      /* round trip (f64, the stored integers, scale and bias): |x - deq|
       * within half a step, + the clamp slack of rounded scales / biases,
       * + a few f32 ulps of the device's quotient (x - b) / s, which may
       * round an exact k + 0.5 - d up to the tie k + 0.5 */
      double lim = bound + fabs(sd) * qhi * 0x1p-21 + 1e-12 * (fabs(xs[j]) + fabs(bd)) + 1e-30;
      double r = fabs(sd * qd + bd - xs[j]) / lim;
      if (!(r <= rt)) rt = r;
    }
  }
  zck_emit(o, op, "scales = ref", dt, name, serr, scale_tol(sdt), serr <= scale_tol(sdt));
  char tn[96];
  snprintf(tn, sizeof tn, "%.60s ties %lld", name, (long long)ties);
  zck_emit(o, op, "ints = round(x / s)", dt, tn, (double)mism, 0, mism == 0);
  zck_emit(o, op, "|x - deq| / (step/2)", dt, name, rt, 1.0, rt <= 1.0);
done:
  if (st != ZMLX_OK) zck_emit_fail(o, op, "fwd", dt, name, st);
  free(xv); free(sv); free(bv); free(qb);
  zmlx_array_release(x); zmlx_array_release(q); zmlx_array_release(s);
  zmlx_array_release(b);
  zmlx_clear_error();
}

static void q_bad(const zmlx_check_opts *o, const char *op, int mode) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  zmlx_array *x = NULL, *x48 = NULL, *xi = NULL, *sc = NULL, *x0 = NULL;
  zmlx_array *q = NULL, *s = NULL, *b = NULL;
  int64_t sh[2] = {2, 64}, sh48[2] = {2, 48}, sh0[2] = {2, 0};
  if (qc_bytes(dev, dt, 2, sh, 0, &x) || qc_bytes(dev, dt, 2, sh48, 0, &x48) ||
      qc_bytes(dev, ZMLX_I32, 2, sh, 0, &xi) || qc_bytes(dev, dt, 0, NULL, 0, &sc) ||
      qc_bytes(dev, dt, 2, sh0, 0, &x0)) {
    zck_emit_fail(o, op, "bad input", dt, "setup", ZMLX_ERR_BACKEND);
    goto done;
  }
#define Q8(xx, sdt) zmlx_quantize_int8_rows(xx, sdt, &q, &s)
#define Q4(xx, g, sdt) zmlx_quantize_int4(xx, g, sdt, &q, &s, &b)
  if (mode == 8) {
    zck_expect(o, op, "bad: x i32", Q8(xi, ZMLX_F32), NULL, ZMLX_ERR_DTYPE, "x has dtype i32");
    zck_expect(o, op, "bad: x scalar", Q8(sc, ZMLX_F32), NULL, ZMLX_ERR_SHAPE, "rank");
    zck_expect(o, op, "bad: cols 0", Q8(x0, ZMLX_F32), NULL, ZMLX_ERR_SHAPE, "is 0");
    zck_expect(o, op, "bad: scale_dtype i8", Q8(x, ZMLX_I8), NULL, ZMLX_ERR_DTYPE,
                   "scale_dtype");
    zck_expect(o, op, "bad: NULL x", Q8(NULL, ZMLX_F32), NULL, ZMLX_ERR_NULL_ARG, "'x'");
  } else {
    zck_expect(o, op, "bad: group 16", Q4(x, 16, ZMLX_F32), NULL, ZMLX_ERR_INVALID_ARG,
                   "group_size 16");
    zck_expect(o, op, "bad: cols 48 % group 32", Q4(x48, 32, ZMLX_F32), NULL, ZMLX_ERR_SHAPE,
                   "not a multiple of group_size 32");
    zck_expect(o, op, "bad: x i32", Q4(xi, 32, ZMLX_F32), NULL, ZMLX_ERR_DTYPE, "x has dtype");
    zck_expect(o, op, "bad: scale_dtype u8", Q4(x, 32, ZMLX_U8), NULL, ZMLX_ERR_DTYPE,
                   "scale_dtype");
  }
#undef Q8
#undef Q4
done:
  zmlx_array_release(x); zmlx_array_release(x48); zmlx_array_release(xi);
  zmlx_array_release(sc); zmlx_array_release(x0);
  zmlx_array_release(q); zmlx_array_release(s); zmlx_array_release(b);
  zmlx_clear_error();
}

static zmlx_status q_check(const zmlx_check_opts *o, const char *op, int mode) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x71756E74ULL + (uint64_t)mode;
  if (!rng) rng = 1;
  if (mode == 8) {
    static const qcase quick[] = {{2, {1, 64}, 0, 0}, {2, {3, 7}, 0, 0}, {2, {5, 1000}, 0, 0},
                                  {2, {2, 4096}, 0, 0}, {3, {2, 3, 40}, 0, 1}};
    static const qcase full[] = {{2, {1, 1}, 0, 0}, {2, {17, 64}, 0, 0}, {2, {64, 4096}, 0, 0},
                                 {2, {2, 32768}, 0, 0}, {2, {9, 1000}, 0, 1},
                                 {2, {300, 130}, 0, 0}};
    for (size_t i = 0; i < sizeof quick / sizeof *quick; i++)
      q_case(o, op, 8, &quick[i], SDT(i, quick), i == 0, 0, &rng);
    /* exact .5 ties (scales of every dtype), at the scalar and 16-byte widths */
    static const qcase tie_cases[] = {{2, {4, 7}, 0, 0}, {2, {4, 64}, 0, 0}};
    static const zmlx_dtype tie_sdt[] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
    for (size_t i = 0; i < 2; i++)
      for (size_t k = 0; k < 3; k++) q_case(o, op, 8, &tie_cases[i], tie_sdt[k], 0, 1, &rng);
    if (!o->quick)
      for (size_t i = 0; i < sizeof full / sizeof *full; i++)
        q_case(o, op, 8, &full[i], SDT(i, full), 0, 0, &rng);
  } else {
    static const qcase quick[] = {{2, {1, 64}, 32, 0}, {2, {3, 128}, 64, 0},
                                  {2, {2, 4096}, 128, 0}, {2, {5, 256}, 32, 1},
                                  {3, {2, 3, 128}, 64, 0}};
    static const qcase full[] = {{2, {1, 32768}, 64, 0}, {2, {64, 4096}, 32, 0},
                                 {2, {17, 1024}, 128, 1}, {2, {2, 32768}, 128, 0},
                                 {2, {33, 4096}, 64, 0}};
    for (size_t i = 0; i < sizeof quick / sizeof *quick; i++)
      q_case(o, op, 4, &quick[i], SDT(i, quick), i == 0, 0, &rng);
    if (!o->quick)
      for (size_t i = 0; i < sizeof full / sizeof *full; i++)
        q_case(o, op, 4, &full[i], SDT(i, full), 0, 0, &rng);
  }
  q_bad(o, op, mode);
  return ZMLX_OK;
}

static zmlx_status check_quant_int8(const zmlx_check_opts *o) {
  return q_check(o, "quant_int8", 8);
}
static zmlx_status check_quant_int4(const zmlx_check_opts *o) {
  return q_check(o, "quant_int4", 4);
}

const zmlx_catalog_op zck_catalog_quant_ops[] = {
    {"dequant_int8", check_dequant_int8},
    {"dequant_int8_silu", check_dequant_int8_silu},
    {"dequant_int4", check_dequant_int4},
    {"dequant_int4_silu", check_dequant_int4_silu},
    {"quant_int8", check_quant_int8},
    {"quant_int4", check_quant_int4},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct dq_bench {
  int mode;
  zmlx_quant_act act;
  zmlx_array *q, *s, *b;
} dq_bench;

static zmlx_status dq_bench_run(void *p) {
  dq_bench *c = p;
  zmlx_array *y = NULL;
  zmlx_status st = c->mode == 8
                       ? zmlx_dequantize_int8_rows(c->q, c->s, ZMLX_BF16, c->act, &y)
                       : zmlx_dequantize_int4(c->q, c->s, c->b, 64, ZMLX_BF16, c->act, &y);
  zmlx_array_release(y);
  return st;
}

/* An LLM weight [14336, 4096] (the MLP of an 8B model) with bf16 scales
 * (int4: group 64, bf16 biases) to bf16: the packed integers, the scales
 * (and biases) are read once, the output written once. */
static zmlx_status dq_bench_case(const zmlx_bench_opts *o, const char *op, int mode,
                                 zmlx_quant_act act) {
  const int64_t rows = zck_bench_rows(o, 14336), cols = 4096;
  int64_t shape[2] = {rows, cols}, qsh[2] = {rows, mode == 8 ? cols : cols / 2};
  int64_t ssh[2] = {rows, cols / 64};
  const int64_t nq = qsh[0] * qsh[1], ns = mode == 8 ? rows : rows * (cols / 64);
  dq_bench c = {mode, act, NULL, NULL, NULL};
  uint8_t *h = malloc((size_t)nq);
  if (!h) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  uint64_t rng = 0x5151ULL;
  for (int64_t i = 0; i < nq; i++) h[i] = (uint8_t)(zck_uniform(&rng, 0, 1) * 256);
  zmlx_status st = zmlx_array_from_host(o->device, mode == 8 ? ZMLX_I8 : ZMLX_U8, 2, qsh, h, &c.q);
  free(h);
  if (st == ZMLX_OK)
    st = zck_bench_random(o->device, ZMLX_BF16, mode == 8 ? 1 : 2, ssh, 61, &c.s);
  if (st == ZMLX_OK && mode == 4) st = zck_bench_random(o->device, ZMLX_BF16, 2, ssh, 62, &c.b);
  double bytes = (double)nq + 2.0 * (double)ns * (mode == 4 ? 2 : 1) + 2.0 * (double)(rows * cols);
  if (st == ZMLX_OK)
    st = zck_bench_time_emit(o, op, ZMLX_BF16, 2, shape, bytes, dq_bench_run, &c);
  zmlx_array_release(c.q);
  zmlx_array_release(c.s);
  zmlx_array_release(c.b);
  return st;
}

static zmlx_status bench_dequant_int4(const zmlx_bench_opts *o) {
  return dq_bench_case(o, "dequant_int4", 4, ZMLX_QUANT_NONE);
}
static zmlx_status bench_dequant_int4_silu(const zmlx_bench_opts *o) {
  return dq_bench_case(o, "dequant_int4_silu", 4, ZMLX_QUANT_SILU);
}
static zmlx_status bench_dequant_int8(const zmlx_bench_opts *o) {
  return dq_bench_case(o, "dequant_int8", 8, ZMLX_QUANT_NONE);
}
static zmlx_status bench_dequant_int8_silu(const zmlx_bench_opts *o) {
  return dq_bench_case(o, "dequant_int8_silu", 8, ZMLX_QUANT_SILU);
}

const zmlx_catalog_bench zck_catalog_quant_bench[] = {
    {"dequant_int4", bench_dequant_int4},
    {"dequant_int4_silu", bench_dequant_int4_silu},
    {"dequant_int8", bench_dequant_int8},
    {"dequant_int8_silu", bench_dequant_int8_silu},
    {0},
};
