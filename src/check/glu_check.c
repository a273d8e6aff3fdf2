/* `zmlx check` and `zmlx bench` cases of src/ops/glu.c: forward against
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
#include "kernel/kernel.h"
#include "check/check_util.h"
#include "ops/glu.h"

/* ================================================================ checks */

typedef enum glu_kind {
  K_SWIGLU, K_GEGLU, K_GEGLU_TANH, K_SWIGLU_SPLIT, K_GEGLU_SPLIT, K_BIAS_GELU, K_BIAS_GELU_TANH,
  K_BIAS_SILU, K_BIAS_SWIGLU, K_GEGLU_TANH_SPLIT
} glu_kind;

static const char *kind_name(glu_kind k) {
  static const char *n[] = {"swiglu", "geglu", "geglu(tanh)", "swiglu_split", "geglu_split",
                            "bias_gelu", "bias_gelu(tanh)", "bias_silu", "bias_swiglu",
                            "geglu_split(tanh)"};
  return n[k];
}

/* act and its derivative: 0 silu, 1 gelu erf, 2 gelu tanh. */
static double act(int f, double x, double *dx) {
  if (f == 0) {
    double s = 1 / (1 + exp(-x));
    *dx = s * (1 + x * (1 - s));
    return x * s;
  }
  if (f == 1) {
    double cdf = 0.5 * (1 + erf(x / sqrt(2.0)));
    *dx = cdf + x * exp(-0.5 * x * x) / sqrt(2 * M_PI);
    return x * cdf;
  }
  double k = sqrt(2 / M_PI), u = k * (x + 0.044715 * x * x * x);
  double t = tanh(u);
  *dx = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x);
  return 0.5 * x * (1 + t);
}

static int kind_act(glu_kind k) {
  switch (k) {
    case K_SWIGLU: case K_SWIGLU_SPLIT: case K_BIAS_SILU: case K_BIAS_SWIGLU: return 0;
    case K_GEGLU: case K_GEGLU_SPLIT: case K_BIAS_GELU: return 1;
    default: return 2;
  }
}

/* Number of inputs and their shapes for rows x F (F = output last dim). */
static int kind_inputs(glu_kind k, int64_t rows, int64_t F, int64_t sh[2][2], int nd[2]) {
  nd[0] = 2;
  sh[0][0] = rows;
  switch (k) {
    case K_SWIGLU: case K_GEGLU: case K_GEGLU_TANH:
      sh[0][1] = F;
      nd[1] = 2;
      sh[1][0] = rows;
      sh[1][1] = F;
      return 2;
    case K_SWIGLU_SPLIT: case K_GEGLU_SPLIT: case K_GEGLU_TANH_SPLIT:
      sh[0][1] = 2 * F;
      return 1;
    case K_BIAS_GELU: case K_BIAS_GELU_TANH: case K_BIAS_SILU:
      sh[0][1] = F;
      nd[1] = 1;
      sh[1][0] = F;
      return 2;
    default:
      sh[0][1] = 2 * F;
      nd[1] = 1;
      sh[1][0] = 2 * F;
      return 2;
  }
}

static zmlx_status kind_call(glu_kind k, zmlx_array *const *in, zmlx_array **out) {
  switch (k) {
    case K_SWIGLU: return zmlx_swiglu(in[0], in[1], out);
    case K_GEGLU: return zmlx_geglu(in[0], in[1], 0, out);
    case K_GEGLU_TANH: return zmlx_geglu(in[0], in[1], 1, out);
    case K_SWIGLU_SPLIT: return zmlx_swiglu_split(in[0], out);
    case K_GEGLU_SPLIT: return zmlx_geglu_split(in[0], 0, out);
    case K_GEGLU_TANH_SPLIT: return zmlx_geglu_split(in[0], 1, out);
    case K_BIAS_GELU: return zmlx_bias_gelu(in[0], in[1], 0, out);
    case K_BIAS_GELU_TANH: return zmlx_bias_gelu(in[0], in[1], 1, out);
    case K_BIAS_SILU: return zmlx_bias_silu(in[0], in[1], out);
    default: return zmlx_bias_swiglu(in[0], in[1], out);
  }
}

/* Host reference: out [rows, F] and, for cotangent g, grads of the inputs
 * (g0 like in0, g1 like in1; may be NULL). */
static void kind_ref(glu_kind k, int64_t rows, int64_t F, const double *x0, const double *x1,
                     const double *g, double *out, double *g0, double *g1) {
  int f = kind_act(k);
  if (g0) memset(g0, 0, sizeof(double) * (size_t)(rows * 2 * F));
  if (g1) memset(g1, 0, sizeof(double) * (size_t)(2 * F * (rows > 0 ? rows : 1)));
  for (int64_t r = 0; r < rows; r++)
    for (int64_t j = 0; j < F; j++) {
      int64_t o = r * F + j;
      double a, b = 1, da;
      int has_b = 1;
      switch (k) {
        case K_SWIGLU: case K_GEGLU: case K_GEGLU_TANH:
          a = x0[o]; b = x1[o]; break;
        case K_SWIGLU_SPLIT: case K_GEGLU_SPLIT: case K_GEGLU_TANH_SPLIT:
          a = x0[r * 2 * F + j]; b = x0[r * 2 * F + F + j]; break;
        case K_BIAS_SWIGLU:
          a = x0[r * 2 * F + j] + x1[j]; b = x0[r * 2 * F + F + j] + x1[F + j]; break;
        default:
          a = x0[o] + x1[j]; has_b = 0; break;
      }
      double y = act(f, a, &da);
      out[o] = y * b;
      if (!g) continue;
      double ga = g[o] * da * b, gb = g[o] * y;
      switch (k) {
        case K_SWIGLU: case K_GEGLU: case K_GEGLU_TANH:
          g0[o] = ga; g1[o] = gb; break;
        case K_SWIGLU_SPLIT: case K_GEGLU_SPLIT: case K_GEGLU_TANH_SPLIT:
          g0[r * 2 * F + j] = ga; g0[r * 2 * F + F + j] = gb; break;
        case K_BIAS_SWIGLU:
          g0[r * 2 * F + j] = ga; g0[r * 2 * F + F + j] = gb;
          g1[j] += ga; g1[F + j] += gb; break;
        default:
          (void)has_b;
          g0[o] = ga; g1[j] += ga; break;
      }
    }
}

typedef struct glu_gctx {
  glu_kind k;
  zmlx_array *w;
} glu_gctx;

static zmlx_status glu_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  return kind_call(((glu_gctx *)ud)->k, in, out);
}

static zmlx_status glu_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  glu_gctx *g = ud;
  zmlx_array *y = NULL;
  ZMLX_CHECK(glu_fn(ud, in, n, &y));
  zmlx_status st = zck_weighted_sum(y, g->w, out);
  zmlx_array_release(y);
  return st;
}

static int kind_split(glu_kind k) {
  return k == K_SWIGLU_SPLIT || k == K_GEGLU_SPLIT || k == K_GEGLU_TANH_SPLIT ||
         k == K_BIAS_SWIGLU;
}

/* A row on which path a split form took since zmlxi_glu_split_launches was `before`:
 * the 16-byte kernel (want) or the engine. */
static void emit_path(const zmlx_check_opts *o, const char *op, zmlx_dtype dt, const char *name,
                      long before, int want) {
  int got = zmlxi_glu_split_launches != before;
  zck_emit(o, op, want ? "path: 16-byte kernel" : "path: engine", dt, name, got != want, 0,
               got == want);
}

/* mode 0: forward; 1: f32 finite differences; 2: VJP vs the f64 reference.
 * Split forms also report their path: the fast kernel in a forward with F
 * a multiple of the vector width, the engine while recording for the VJP. */
static void glu_case(const zmlx_check_opts *o, glu_kind k, int64_t rows, int64_t F, int mode,
                     uint64_t *rng) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = mode == 1 ? ZMLX_F32 : o->dtype;
  const char *op = kind_name(k);
  char name[96];
  int64_t sh[2][2] = {{0, 0}, {0, 0}};
  int nd[2] = {0, 0};
  int nin = kind_inputs(k, rows, F, sh, nd);
  snprintf(name, sizeof name, "[%lld, %lld] -> [%lld, %lld]", (long long)sh[0][0],
           (long long)sh[0][1], (long long)rows, (long long)F);
  if (zmlxi_glu_split_grid_cap > 0) {
    size_t l = strlen(name);
    snprintf(name + l, sizeof name - l, " grid %lld", (long long)zmlxi_glu_split_grid_cap);
  }
  const char *what = mode == 0 ? "fwd" : mode == 1 ? "grad (fd)" : "grad (vjp)";
  long launches = zmlxi_glu_split_launches;
  int64_t n0 = sh[0][0] * sh[0][1], n1 = nin > 1 ? (nd[1] == 2 ? sh[1][0] * sh[1][1] : sh[1][0]) : 1;
  int64_t no = rows * F;
  double *x0 = malloc(sizeof(double) * (size_t)n0), *x1 = malloc(sizeof(double) * (size_t)n1);
  double *g = malloc(sizeof(double) * (size_t)no), *want = malloc(sizeof(double) * (size_t)no);
  double *w0 = malloc(sizeof(double) * (size_t)(rows * 2 * F));
  double *w1 = malloc(sizeof(double) * (size_t)(2 * F * rows));
  double *got = NULL, *got1 = NULL;
  zmlx_array *in[2] = {NULL, NULL}, *y = NULL, *w = NULL, *grads[2] = {NULL, NULL};
  int64_t osh[2] = {rows, F};
  zmlx_status st = ZMLX_OK;
  if (!x0 || !x1 || !g || !want || !w0 || !w1) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  st = zck_random(dev, dt, nd[0], sh[0], -3, 3, rng, x0, &in[0]);
  if (st == ZMLX_OK && nin > 1) st = zck_random(dev, dt, nd[1], sh[1], -1, 1, rng, x1, &in[1]);
  if (st != ZMLX_OK) goto done;
  /* pointwise on a in U(-3, 3) times b in U(-1, 1): f32 error at scale 3 */
  const zck_bound bound = zck_bound_of(ZCK_TOL_ELEMENTWISE, dt, 3, 1);
  double e, tol;
  if (mode == 0) {
    zck_poison_pool(dev, dt, 2, osh);
    st = kind_call(k, in, &y);
    if (st == ZMLX_OK) st = zck_download(y, &got);
    if (st != ZMLX_OK) goto done;
    kind_ref(k, rows, F, x0, x1, NULL, want, NULL, NULL);
    int ok = zck_within(got, want, no, bound, &e, &tol);
    zck_emit(o, op, what, dt, name, e, tol, ok);
    if (kind_split(k)) emit_path(o, op, dt, name, launches, F % zmlxi_glu_split_vec(dt) == 0);
  } else if (mode == 1) {
    st = zck_random(dev, dt, 2, osh, -1, 1, rng, g, &w);
    if (st != ZMLX_OK) goto done;
    glu_gctx gc = {k, w};
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(glu_loss, &gc, in, nin, 1e-3, zck_fd_tol(), &rep);
    if (st != ZMLX_OK) goto done;
    e = 0;
    for (int i = 0; i < nin; i++) e = fmax(e, rep.inputs[i].max_abs_err);
    if (rep.jvp_checked) e = fmax(e, rep.jvp_abs_err);
    zck_emit(o, op, what, dt, name, e, zck_fd_tol(), rep.passed);
  } else {
    st = zck_random(dev, dt, 2, osh, -1, 1, rng, g, &w);
    if (st != ZMLX_OK) goto done;
    glu_gctx gc = {k, NULL};
    int argn[2] = {0, 1};
    st = zmlx_vjp(glu_fn, &gc, in, nin, argn, nin, w, &y, grads);
    if (st == ZMLX_OK) st = zck_download(grads[0], &got);
    if (st == ZMLX_OK && nin > 1) st = zck_download(grads[1], &got1);
    if (st != ZMLX_OK) goto done;
    kind_ref(k, rows, F, x0, x1, g, want, w0, w1);
    if (kind_split(k)) emit_path(o, op, dt, name, launches, 0);
    int ok = zck_within(got, w0, n0, bound, &e, &tol);
    if (nin > 1) {
      /* a bias gradient sums `rows` terms of either sign, each up to 3 */
      int is_bias = nd[1] == 1;
      zck_bound b1 = is_bias ? zck_bound_sum(ZCK_TOL_ELEMENTWISE, dt, rows) : bound;
      if (is_bias) b1.atol *= 3.0 * (double)rows;
      ok = zck_within_acc(got1, w1, NULL, n1, b1, &e, &tol);
    }
    zck_emit(o, op, what, dt, name, e, tol, ok);
  }
done:
  if (st != ZMLX_OK) zck_emit_fail(o, op, what, dt, name, st);
  free(x0); free(x1); free(g); free(want); free(w0); free(w1); free(got); free(got1);
  zmlx_array_release(in[0]); zmlx_array_release(in[1]); zmlx_array_release(y);
  zmlx_array_release(w); zmlx_array_release(grads[0]); zmlx_array_release(grads[1]);
  zmlx_clear_error();
}

/* Host values of a view of a dense array whose values are `base`. */
static void view_values(const zmlx_array *v, const double *base, double *out) {
  int64_t idx[ZMLX_MAX_DIMS] = {0};
  for (int64_t e = 0; e < v->size; e++) {
    int64_t at = v->offset;
    for (int d = 0; d < v->ndim; d++) at += idx[d] * v->strides[d];
    out[e] = base[at];
    for (int d = v->ndim - 1; d >= 0; d--) {
      if (++idx[d] < v->shape[d]) break;
      idx[d] = 0;
    }
  }
}

/* A split form's forward on x (or bias) as a view of a larger array, and
 * the path it took: the fast kernel reads aligned views in place (a row
 * offset; padded rows, also with leading axes that fold into one row
 * stride), the engine takes the rest (a misaligned start; leading axes
 * that do not fold; a misaligned bias). */
enum { V_ROW_OFFSET, V_PADDED, V_PADDED_3D, V_MISALIGNED, V_OFFSET_3D, V_BIAS_MISALIGNED };

static void glu_view_case(const zmlx_check_opts *o, glu_kind k, int64_t rows, int64_t F,
                          int layout, uint64_t *rng) {
  static const char *const lname[] = {"row offset", "padded rows", "padded rows, 3-d",
                                      "misaligned", "row offset, 3-d", "misaligned bias"};
  static const int lfast[] = {1, 1, 1, 0, 0, 0};
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  const char *op = kind_name(k);
  const int has_bias = k == K_BIAS_SWIGLU;
  const int nd = layout == V_PADDED_3D || layout == V_OFFSET_3D ? 3 : 2;
  const int64_t D = 2 * F, lead = nd == 3 ? 2 : 1, R = lead * rows, no = R * F;
  const int64_t roff = layout == V_ROW_OFFSET || layout == V_OFFSET_3D ? 1 : 0;
  const int64_t pad = layout == V_PADDED || layout == V_PADDED_3D ? 8 : layout == V_MISALIGNED;
  int64_t bsh[3] = {0}, start[3] = {0}, stop[3] = {0};
  if (nd == 3) bsh[0] = stop[0] = lead;
  bsh[nd - 2] = rows + roff;
  start[nd - 2] = roff;
  stop[nd - 2] = rows + roff;
  bsh[nd - 1] = D + pad;
  start[nd - 1] = pad;
  stop[nd - 1] = D + pad;
  int64_t nb = bsh[nd - 1] * bsh[nd - 2] * (nd == 3 ? lead : 1);
  int64_t bbsh[1] = {D + (layout == V_BIAS_MISALIGNED)}, bstart[1] = {bbsh[0] - D},
          bstop[1] = {bbsh[0]};
  char name[128];
  snprintf(name, sizeof name, "[%lld, %lld] -> [%lld, %lld] %s", (long long)R, (long long)D,
           (long long)R, (long long)F, lname[layout]);
  double *bv = malloc(sizeof(double) * (size_t)nb), *x0 = malloc(sizeof(double) * (size_t)(R * D));
  double *bbv = malloc(sizeof(double) * (size_t)(D + 1)), *x1 = malloc(sizeof(double) * (size_t)D);
  double *want = malloc(sizeof(double) * (size_t)no), *got = NULL;
  zmlx_array *base = NULL, *bbase = NULL, *in[2] = {NULL, NULL}, *y = NULL;
  zmlx_status st = ZMLX_OK;
  if (!bv || !x0 || !bbv || !x1 || !want) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  st = zck_random(dev, dt, nd, bsh, -3, 3, rng, bv, &base);
  if (st == ZMLX_OK) st = zmlx_slice(base, start, stop, NULL, &in[0]);
  if (st == ZMLX_OK && has_bias) st = zck_random(dev, dt, 1, bbsh, -1, 1, rng, bbv, &bbase);
  if (st == ZMLX_OK && has_bias) st = zmlx_slice(bbase, bstart, bstop, NULL, &in[1]);
  if (st != ZMLX_OK) goto done;
  view_values(in[0], bv, x0);
  if (has_bias) view_values(in[1], bbv, x1);
  int64_t osh[2] = {R, F};
  zck_poison_pool(dev, dt, 2, osh);
  long launches = zmlxi_glu_split_launches;
  st = kind_call(k, in, &y);
  if (st == ZMLX_OK) st = zck_download(y, &got);
  if (st != ZMLX_OK) goto done;
  kind_ref(k, R, F, x0, x1, NULL, want, NULL, NULL);
  double e, tol;
  int ok = zck_within(got, want, no, zck_bound_of(ZCK_TOL_ELEMENTWISE, dt, 3, 1), &e, &tol);
  zck_emit(o, op, "fwd (view)", dt, name, e, tol, ok);
  emit_path(o, op, dt, name, launches, lfast[layout] && F % zmlxi_glu_split_vec(dt) == 0);
done:
  if (st != ZMLX_OK) zck_emit_fail(o, op, "fwd (view)", dt, name, st);
  free(bv); free(x0); free(bbv); free(x1); free(want); free(got);
  zmlx_array_release(base); zmlx_array_release(bbase); zmlx_array_release(in[0]);
  zmlx_array_release(in[1]); zmlx_array_release(y);
  zmlx_clear_error();
}

static void glu_bad(const zmlx_check_opts *o, glu_kind k) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  const char *op = kind_name(k);
  zmlx_array *a = NULL, *b = NULL, *c = NULL, *ai = NULL, *s = NULL, *y = NULL;
  int64_t sa[2] = {3, 6}, sb[2] = {3, 5}, sc[1] = {5};
  if (zmlx_array_zeros(dev, dt, 2, sa, &a) || zmlx_array_zeros(dev, dt, 2, sb, &b) ||
      zmlx_array_zeros(dev, dt, 1, sc, &c) || zmlx_array_zeros(dev, ZMLX_I32, 2, sa, &ai) ||
      zmlx_array_zeros(dev, dt, 0, NULL, &s)) {
    zck_emit_fail(o, op, "bad input", dt, "setup", ZMLX_ERR_BACKEND);
    goto done;
  }
  switch (k) {
    case K_SWIGLU:
      zck_expect(o, op, "bad: shape mismatch", zmlx_swiglu(a, b, &y), y, ZMLX_ERR_SHAPE,
                     "do not match");
      y = NULL;
      zck_expect(o, op, "bad: dtype i32", zmlx_swiglu(ai, ai, &y), y, ZMLX_ERR_DTYPE,
                     "dtype");
      y = NULL;
      zck_expect(o, op, "bad: scalar", zmlx_swiglu(s, s, &y), y, ZMLX_ERR_SHAPE, "rank");
      break;
    case K_GEGLU:
      zck_expect(o, op, "bad: shape mismatch", zmlx_geglu(a, b, 0, &y), y, ZMLX_ERR_SHAPE,
                     "do not match");
      y = NULL;
      zck_expect(o, op, "bad: dtype mismatch", zmlx_geglu(a, ai, 0, &y), y, ZMLX_ERR_DTYPE,
                     "dtype");
      break;
    case K_SWIGLU_SPLIT:
      zck_expect(o, op, "bad: odd last dim", zmlx_swiglu_split(b, &y), y, ZMLX_ERR_SHAPE,
                     "even");
      break;
    case K_GEGLU_SPLIT:
      zck_expect(o, op, "bad: odd last dim", zmlx_geglu_split(b, 0, &y), y, ZMLX_ERR_SHAPE,
                     "even");
      break;
    case K_BIAS_GELU:
      zck_expect(o, op, "bad: bias length", zmlx_bias_gelu(a, c, 0, &y), y, ZMLX_ERR_SHAPE,
                     "bias");
      break;
    case K_BIAS_SILU:
      zck_expect(o, op, "bad: bias rank", zmlx_bias_silu(b, b, &y), y, ZMLX_ERR_SHAPE,
                     "bias");
      break;
    case K_BIAS_SWIGLU:
      zck_expect(o, op, "bad: odd last dim", zmlx_bias_swiglu(b, c, &y), y, ZMLX_ERR_SHAPE,
                     "even");
      y = NULL;
      zck_expect(o, op, "bad: bias length", zmlx_bias_swiglu(a, c, &y), y, ZMLX_ERR_SHAPE,
                     "bias");
      break;
    default:
      break;
  }
done:
  zmlx_array_release(a); zmlx_array_release(b); zmlx_array_release(c);
  zmlx_array_release(ai); zmlx_array_release(s);
}

static zmlx_status glu_check_kinds(const zmlx_check_opts *o, const glu_kind *kinds, int nk) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x676C75ULL + (uint64_t)kinds[0] * 7919;
  if (!rng) rng = 1;
  static const int64_t quick[][2] = {{1, 1}, {3, 7}, {4, 64}, {2, 1000}, {3, 4096}};
  static const int64_t full[][2] = {{1, 1}, {5, 1}, {3, 7}, {17, 64}, {9, 1000},
                                    {3, 4097}, {64, 333}, {2, 14336}, {3, 4096}};
  for (int ki = 0; ki < nk; ki++) {
    glu_kind k = kinds[ki];
    int n = o->quick ? 5 : 9;
    for (int i = 0; i < n; i++) {
      const int64_t *s = o->quick ? quick[i] : full[i];
      glu_case(o, k, s[0], s[1], 0, &rng);
    }
    if (kind_split(k)) {
      /* the fast kernel's grid-stride loop, going round: more threads than
       * a row's chunks (the row carries), then fewer */
      zmlxi_glu_split_grid_cap = 100;
      glu_case(o, k, 17, 64, 0, &rng);
      zmlxi_glu_split_grid_cap = 5;
      glu_case(o, k, 3, 64, 0, &rng);
      zmlxi_glu_split_grid_cap = 0;
      for (int l = V_ROW_OFFSET; l <= V_OFFSET_3D; l++) glu_view_case(o, k, 3, 64, l, &rng);
      if (k == K_BIAS_SWIGLU) glu_view_case(o, k, 3, 64, V_BIAS_MISALIGNED, &rng);
      /* gradients where the forward alone would take the fast kernel: the
       * finite differences run it, the recorded VJP / JVP the engine */
      if (o->dtype == ZMLX_F32) glu_case(o, k, 3, 8, 1, &rng);
      glu_case(o, k, 4, 64, 2, &rng);
    }
    if (o->dtype == ZMLX_F32) glu_case(o, k, 3, 5, 1, &rng);
    glu_case(o, k, 3, 7, 2, &rng);
    if (!o->quick) glu_case(o, k, 33, 130, 2, &rng);
    glu_bad(o, k);
  }
  return ZMLX_OK;
}

static zmlx_status check_swiglu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_SWIGLU, K_SWIGLU_SPLIT};
  return glu_check_kinds(o, k, 2);
}
static zmlx_status check_geglu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_GEGLU, K_GEGLU_TANH, K_GEGLU_SPLIT, K_GEGLU_TANH_SPLIT};
  return glu_check_kinds(o, k, 4);
}
static zmlx_status check_bias_gelu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_BIAS_GELU, K_BIAS_GELU_TANH};
  return glu_check_kinds(o, k, 2);
}
static zmlx_status check_bias_silu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_BIAS_SILU};
  return glu_check_kinds(o, k, 1);
}
static zmlx_status check_bias_swiglu(const zmlx_check_opts *o) {
  const glu_kind k[] = {K_BIAS_SWIGLU};
  return glu_check_kinds(o, k, 1);
}

const zmlx_catalog_op zck_catalog_glu_ops[] = {
    {"swiglu", check_swiglu},
    {"geglu", check_geglu},
    {"bias_gelu", check_bias_gelu},
    {"bias_silu", check_bias_silu},
    {"bias_swiglu", check_bias_swiglu},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct glu_bench {
  int split;
  zmlx_array *a, *b;
} glu_bench;

static zmlx_status glu_bench_run(void *p) {
  glu_bench *c = p;
  zmlx_array *y = NULL;
  zmlx_status st = c->split ? zmlx_swiglu_split(c->a, &y) : zmlx_swiglu(c->a, c->b, &y);
  zmlx_array_release(y);
  return st;
}

/* bf16 gate and up [16384, 14336] (or one [16384, 28672] split): read both,
 * write the product. */
static zmlx_status glu_bench_case(const zmlx_bench_opts *o, const char *op, int split) {
  int64_t shape[2] = {zck_bench_rows(o, 16384), 14336}, xshape[2] = {shape[0], 2 * shape[1]};
  glu_bench c = {split, NULL, NULL};
  zmlx_status st = split ? zck_bench_random(o->device, ZMLX_BF16, 2, xshape, 41, &c.a)
                         : zck_bench_random(o->device, ZMLX_BF16, 2, shape, 41, &c.a);
  if (st == ZMLX_OK && !split) st = zck_bench_random(o->device, ZMLX_BF16, 2, shape, 42, &c.b);
  double bytes = 3.0 * 2.0 * (double)shape[0] * (double)shape[1];
  if (st == ZMLX_OK)
    st = zck_bench_time_emit(o, op, ZMLX_BF16, 2, shape, bytes, glu_bench_run, &c);
  zmlx_array_release(c.a);
  zmlx_array_release(c.b);
  return st;
}

static zmlx_status bench_swiglu(const zmlx_bench_opts *o) {
  ZMLX_CHECK(glu_bench_case(o, "swiglu", 0));
  return glu_bench_case(o, "swiglu_split", 1);
}

const zmlx_catalog_bench zck_catalog_glu_bench[] = {
    {"swiglu", bench_swiglu},
    {0},
};
