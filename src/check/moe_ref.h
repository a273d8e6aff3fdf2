/*
 * The f64 references the MoE checks share (moe_ref.c): src/check/
 * moe_route_check.c (gate, dispatch, permute / combine) and moe_check.c
 * (experts, the layer, quantized weights, benchmarks).
 */
#ifndef ZMLX_CHECK_MOE_REF_H
#define ZMLX_CHECK_MOE_REF_H

#include "zmlx.h"

/* A gate's configuration, as zmlx_moe_gate_opts resolved. */
typedef struct zck_moe_gate {
  int64_t E;
  int k, scoring, renorm;
  double scaling;
  const double *bias; /* NULL or [E] */
} zck_moe_gate;

/* "softmax-topk", "topk-softmax", "sigmoid" (by zmlx_moe_scoring). */
extern const char *const zck_moe_scoring_name[3];

/* Whether ix (k experts, device order) is a top-k of the f64 selection
 * scores of logits row l within tol (exact ties by the lower index). */
int zck_moe_choice_valid(const zck_moe_gate *g, const double *l, const int *ix, double tol);
/* The chosen scores s_j, their sum S and the weights w_j of row l. */
void zck_moe_chosen_scores(const zck_moe_gate *g, const double *l, const int *ix, double *s,
                           double *S, double *w);
/* One token's dlogits (E values) for the cotangent dw of its weights; with
 * magnitude, the same on absolute values. */
void zck_moe_gate_bwd(const zck_moe_gate *g, const double *l, const int *ix, const double *dw,
                      int magnitude, double *dl);
/* The f32 error of a chosen weight relative to it. */
double zck_moe_weight_rel(const zck_moe_gate *g);
/* One token through one SwiGLU MLP scaled by w (y += w mlp(x)), and with dy
 * its gradients (dx, dW1, dW3, dW2 accumulate; *dw = dy . mlp(x)); mag: the
 * magnitude network. tmp: 4 I doubles. */
void zck_moe_mlp_row(int mag, const double *x, const double *W1, const double *W3,
                     const double *W2, int64_t H, int64_t I, double w, double *y, const double *dy,
                     double *dx, double *dW1, double *dW3, double *dW2, double *dw, double *tmp);
/* One token through a 16-bit form of the experts as it rounds, y += w *
 * the expert's output row. ZCK_MOE_LIBRARY16 (src/nn/moe_gemm.c's library
 * products): h1 and h3 (x W1^T, x W3^T), the SwiGLU and the output row each
 * rounded to dt. ZCK_MOE_TILE16 (src/nn/moe_tile.c's grouped products): the
 * SwiGLU alone rounded to dt (the products accumulate in f32 and the output
 * row stays f32). tmp: I doubles. */
enum { ZCK_MOE_LIBRARY16 = 1, ZCK_MOE_TILE16 = 2 };
void zck_moe_rounded_row(zmlx_dtype dt, int form, const double *x, const double *W1,
                         const double *W3, const double *W2, int64_t H, int64_t I, double w,
                         double *y, double *tmp);

#endif
