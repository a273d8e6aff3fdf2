/* The f64 references of the MoE checks (moe_route_check.c, moe_check.c):
 * the gate's scores, choice and VJP, and one token through a SwiGLU MLP
 * with its gradients and its magnitude network (moe_ref.h). */
#include <math.h>

#include "check/check_util.h"
#include "check/moe_ref.h"

static const double U32 = 0x1p-24;

static double sigmoid(double x) { return 1 / (1 + exp(-x)); }
static double silu(double x) { return x * sigmoid(x); }
static double dsilu(double x) {
  double s = sigmoid(x);
  return s * (1 + x * (1 - s));
}

const char *const zck_moe_scoring_name[3] = {"softmax-topk", "topk-softmax", "sigmoid"};

/* ------------------------------------------------------- gate reference */

/* Expert e's score (p, logit or sigmoid) for a row of logits. */
static double score_of(const zck_moe_gate *g, const double *l, int64_t e) {
  if (g->scoring == ZMLX_MOE_SIGMOID) return sigmoid(l[e]);
  if (g->scoring == ZMLX_MOE_TOPK_SOFTMAX) return l[e];
  double mx = -INFINITY, s = 0;
  for (int64_t i = 0; i < g->E; i++) mx = fmax(mx, l[i]);
  for (int64_t i = 0; i < g->E; i++) s += exp(l[i] - mx);
  return exp(l[e] - mx) / s;
}

static double select_of(const zck_moe_gate *g, const double *l, int64_t e) {
  return score_of(g, l, e) + (g->bias ? g->bias[e] : 0);
}

/* Whether ix (k experts, device order) is a top-k of the f64 selection
 * scores: distinct and in range, descending, nothing left out scoring
 * higher, within tol; exact ties ordered (and cut) by the lower index. */
int zck_moe_choice_valid(const zck_moe_gate *g, const double *l, const int *ix, double tol) {
  double lo = INFINITY;
  for (int j = 0; j < g->k; j++) {
    if (ix[j] < 0 || ix[j] >= g->E) return 0;
    for (int m = 0; m < j; m++)
      if (ix[m] == ix[j]) return 0;
    double s = select_of(g, l, ix[j]);
    if (j > 0) {
      double prev = select_of(g, l, ix[j - 1]);
      if (s > prev + tol || (s == prev && ix[j] < ix[j - 1])) return 0;
    }
    lo = fmin(lo, s);
  }
  for (int64_t e = 0; e < g->E; e++) {
    int chosen = 0;
    for (int j = 0; j < g->k; j++) chosen |= ix[j] == e;
    if (chosen) continue;
    double s = select_of(g, l, e);
    if (s > lo + tol) return 0;
    for (int j = 0; j < g->k; j++) /* an exact tie with a chosen one: the lower index wins */
      if (s == select_of(g, l, ix[j]) && e < ix[j]) return 0;
  }
  return 1;
}

/* The chosen scores s_j, their sum S, and the weights w_j. */
void zck_moe_chosen_scores(const zck_moe_gate *g, const double *l, const int *ix, double *s, double *S,
                          double *w) {
  double m = -INFINITY;
  for (int j = 0; j < g->k; j++) s[j] = score_of(g, l, ix[j]), m = fmax(m, s[j]);
  if (g->scoring == ZMLX_MOE_TOPK_SOFTMAX)
    for (int j = 0; j < g->k; j++) s[j] = exp(s[j] - m);
  *S = 0;
  for (int j = 0; j < g->k; j++) *S += s[j];
  const int norm = g->renorm || g->scoring == ZMLX_MOE_TOPK_SOFTMAX;
  for (int j = 0; j < g->k; j++) w[j] = (norm ? s[j] / *S : s[j]) * g->scaling;
}

/* dlogits of one token (E values) for the cotangent dw of its weights;
 * magnitude: the same on absolute values (dw >= 0 given). */
void zck_moe_gate_bwd(const zck_moe_gate *g, const double *l, const int *ix, const double *dw,
                         int magnitude, double *dl) {
  double s[ZMLX_MOE_MAX_K], w[ZMLX_MOE_MAX_K], ds[ZMLX_MOE_MAX_K], S;
  zck_moe_chosen_scores(g, l, ix, s, &S, w);
  const int norm = g->renorm || g->scoring == ZMLX_MOE_TOPK_SOFTMAX;
  double gw = 0;
  for (int j = 0; j < g->k; j++) gw += dw[j] * s[j] / S;
  for (int j = 0; j < g->k; j++) {
    double gj = dw[j] * g->scaling;
    ds[j] = norm ? (magnitude ? gj + fabs(g->scaling) * gw : gj - g->scaling * gw) / S : gj;
    if (magnitude) ds[j] = fabs(ds[j]);
  }
  for (int64_t e = 0; e < g->E; e++) dl[e] = 0;
  if (g->scoring == ZMLX_MOE_SOFTMAX_TOPK) {
    double c = 0;
    for (int j = 0; j < g->k; j++) c += ds[j] * s[j];
    for (int64_t e = 0; e < g->E; e++) {
      double d = 0;
      for (int j = 0; j < g->k; j++) d += ix[j] == e ? ds[j] : 0;
      double p = score_of(g, l, e);
      dl[e] = magnitude ? p * (d + c) : p * (d - c);
    }
    return;
  }
  for (int j = 0; j < g->k; j++)
    dl[ix[j]] = g->scoring == ZMLX_MOE_SIGMOID ? ds[j] * s[j] * (1 - s[j]) : ds[j] * s[j];
}

/* The f32 error of a chosen weight relative to it: E exponentials and sums,
 * the renormalization's k-term sum, the scaling. */
double zck_moe_weight_rel(const zck_moe_gate *g) { return (double)(2 * g->E + 2 * g->k + 32) * U32; }

/* ------------------------------------------------------- SwiGLU reference */

/* One token through one SwiGLU MLP (W1, W3 [I, H], W2 [H, I]) scaled by
 * w: y += w mlp(x). With dy: dx, dW1, dW3, dW2 accumulate the gradients
 * and *dw gets dy . mlp(x). mag: the magnitude network (inputs taken
 * absolute, |silu(a)| <= |a|, errors of a and b through silu and the
 * product bounded by 2.1 |a| |b|, silu' by 1.1 + 0.5 |a| for the error of
 * a inside it). tmp: 4 I doubles. */
void zck_moe_mlp_row(int mag, const double *x, const double *W1, const double *W3,
                    const double *W2, int64_t H, int64_t I, double w, double *y, const double *dy,
                    double *dx, double *dW1, double *dW3, double *dW2, double *dw, double *tmp) {
  double *a = tmp, *b = tmp + I, *act = tmp + 2 * I, *dact = tmp + 3 * I;
#define V(v) (mag ? fabs(v) : (v))
  for (int64_t i = 0; i < I; i++) {
    double sa = 0, sb = 0;
    for (int64_t h = 0; h < H; h++) sa += V(W1[i * H + h]) * V(x[h]), sb += V(W3[i * H + h]) * V(x[h]);
    a[i] = sa, b[i] = sb;
    act[i] = mag ? 2.1 * sa * sb : silu(sa) * sb;
  }
  double dsum = 0;
  for (int64_t h = 0; h < H; h++) {
    double d = 0;
    for (int64_t i = 0; i < I; i++) d += V(W2[h * I + i]) * act[i];
    if (y) y[h] += V(w) * d;
    if (dy) dsum += V(dy[h]) * d;
  }
  if (!dy) return;
  if (dw) *dw = dsum;
  for (int64_t i = 0; i < I; i++) {
    double d = 0;
    for (int64_t h = 0; h < H; h++) {
      d += V(dy[h]) * V(W2[h * I + i]);
      if (dW2) dW2[h * I + i] += V(w) * V(dy[h]) * act[i];
    }
    dact[i] = V(w) * d;
  }
  for (int64_t i = 0; i < I; i++) {
    double da = mag ? dact[i] * b[i] * (1.1 + 0.5 * a[i]) : dact[i] * b[i] * dsilu(a[i]);
    double db = mag ? dact[i] * 2.1 * a[i] : dact[i] * silu(a[i]);
    for (int64_t h = 0; h < H; h++) {
      if (dx) dx[h] += da * V(W1[i * H + h]) + db * V(W3[i * H + h]);
      if (dW1) dW1[i * H + h] += da * V(x[h]);
      if (dW3) dW3[i * H + h] += db * V(x[h]);
    }
  }
#undef V
}

void zck_moe_rounded_row(zmlx_dtype dt, int form, const double *x, const double *W1,
                         const double *W3, const double *W2, int64_t H, int64_t I, double w,
                         double *y, double *tmp) {
  const int lib = form == ZCK_MOE_LIBRARY16;
  for (int64_t i = 0; i < I; i++) {
    double sa = 0, sb = 0;
    for (int64_t h = 0; h < H; h++) sa += W1[i * H + h] * x[h], sb += W3[i * H + h] * x[h];
    if (lib) sa = zck_round(dt, sa), sb = zck_round(dt, sb);
    tmp[i] = zck_round(dt, silu(sa) * sb);
  }
  for (int64_t h = 0; h < H; h++) {
    double d = 0;
    for (int64_t i = 0; i < I; i++) d += W2[h * I + i] * tmp[i];
    y[h] += w * (lib ? zck_round(dt, d) : d);
  }
}
