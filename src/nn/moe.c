/* Mixture of experts (issue 12): SwiGLU experts over the routed pairs with
 * the weighted combine fused into the down-projection (moe_up.zk,
 * moe_down.zk), their backward (moe_bwd_*.zk), the quantized decode path,
 * and zmlx_moe, the layer (routing: moe_route.c; the kernel table and
 * launch helpers: moe_kernels.c). Every kernel sums in a fixed order: no atomics,
 * the same bits on every run.
 *
 * The experts run per pair (token t's j-th choice reads x[t] and its
 * expert's rows), so a token count of 1 reads each chosen expert's weights
 * once and nothing else: the decode path. Prefill runs the same kernels (a
 * grouped GEMM on tensor cores is the step after; bench/NOTES.md). The
 * weight gradients walk each expert's pairs in dispatch order. */
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "nn/moe.h"
#include "ops/kernel_util.h"

/* ------------------------------------------------------------ experts */

static zmlx_status expert_weight(const char *name, zmlx_array *w, int64_t E, int64_t a, int64_t b,
                                 zmlx_array *x) {
  char sh[96];
  if (!w) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_moe_experts: %s is NULL", name);
  if (w->ndim != 3 || w->shape[0] != E || w->shape[1] != a || w->shape[2] != b)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts: %s is %s, want [experts %lld, %lld, "
                     "%lld]", name, zmlxi_shape_str(sh, sizeof sh, w->ndim, w->shape),
                     (long long)E, (long long)a, (long long)b);
  if (!zmlxi_dtype_is_f32_f16_bf16(w->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_moe_experts: %s has dtype %s", name,
                     zmlx_dtype_name(w->dtype));
  if (w->buffer->device != x->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts: %s and x live on different "
                     "devices", name);
  return ZMLX_OK;
}

/* Rows between experts when w1 and w3 can be read in place: rows of H
 * contiguous elements, the same expert stride in both, a whole number of
 * rows of at least I (dense: I; the halves of a fused gate_up [E, 2I, H]
 * sliced along its rows: 2I, so no copy of the weights per call). 0: they
 * are copied dense. */
static int64_t w13_rows_apart(const zmlx_array *w1, const zmlx_array *w3, const moe_expert_cfg *c) {
  const int64_t *s1 = w1->strides, *s3 = w3->strides;
  if (s1[2] != 1 || s3[2] != 1 || s1[1] != c->H || s3[1] != c->H || s1[0] != s3[0] ||
      s1[0] % c->H)
    return 0;
  const int64_t es = s1[0] / c->H;
  return es >= c->I && es <= INT32_MAX ? es : 0;
}

/* w (w1 or w3) as the expert kernels read it with c->ES rows between
 * experts: itself when it has that form, else a dense copy (c->ES = I). */
static zmlx_status w13_rows(zmlx_array *w, const moe_expert_cfg *c, zmlx_array **out) {
  if (c->ES != c->I || zmlx_array_is_contiguous(w)) {
    *out = w;
    return zmlx_array_retain(w);
  }
  return zmlx_array_contiguous(w, out);
}

zmlx_status zmlxi_moe_experts_validate(zmlx_array *x, zmlx_array *weights, zmlx_array *indices,
                                      zmlx_array *w1, zmlx_array *w3, zmlx_array *w2,
                                      moe_expert_cfg *c) {
  char a[96], b[96];
  memset(c, 0, sizeof *c);
  ZMLX_REQUIRE_ARG_OF("zmlx_moe_experts", x);
  ZMLX_REQUIRE_ARG_OF("zmlx_moe_experts", weights);
  ZMLX_REQUIRE_ARG_OF("zmlx_moe_experts", indices);
  ZMLX_REQUIRE_ARG_OF("zmlx_moe_experts", w1);
  if (x->ndim != 2 || !zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts: x must be [tokens, hidden] of f32, f16 "
                     "or bf16, got %s %s", zmlxi_shape_str(a, sizeof a, x->ndim, x->shape),
                     zmlx_dtype_name(x->dtype));
  c->T = x->shape[0];
  c->H = x->shape[1];
  if (indices->ndim != 2 || indices->shape[0] != c->T || indices->dtype != ZMLX_I32 ||
      weights->ndim != 2 || weights->shape[0] != c->T || weights->shape[1] != indices->shape[1] ||
      !zmlxi_dtype_is_f32_f16_bf16(weights->dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts: weights %s %s and indices %s %s must be "
                     "[tokens %lld, k] (float, i32)", zmlxi_shape_str(a, sizeof a, weights->ndim,
                     weights->shape), zmlx_dtype_name(weights->dtype),
                     zmlxi_shape_str(b, sizeof b, indices->ndim, indices->shape),
                     zmlx_dtype_name(indices->dtype), (long long)c->T);
  c->k = (int)indices->shape[1];
  if (c->k < 1 || c->k > ZMLX_MOE_MAX_K)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts: k = %d (1 to %d)", c->k,
                     ZMLX_MOE_MAX_K);
  if (w1->ndim != 3)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts: w1 is %s, want [experts, inter, hidden "
                     "%lld]", zmlxi_shape_str(a, sizeof a, w1->ndim, w1->shape), (long long)c->H);
  c->E = w1->shape[0];
  c->I = w1->shape[1];
  ZMLX_CHECK(expert_weight("w1", w1, c->E, c->I, c->H, x));
  ZMLX_CHECK(expert_weight("w3", w3, c->E, c->I, c->H, x));
  ZMLX_CHECK(expert_weight("w2", w2, c->E, c->H, c->I, x));
  c->ES = w13_rows_apart(w1, w3, c);
  if (!c->ES) c->ES = c->I;
  if (c->k > c->E)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts: k = %d with %lld experts", c->k,
                     (long long)c->E);
  if (weights->buffer->device != x->buffer->device || indices->buffer->device != x->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts: weights, indices and x live on "
                     "different devices");
  if (c->T * c->k * (c->I > c->H ? c->I : c->H) > INT64_MAX / 4 || c->H > INT32_MAX ||
      c->I > INT32_MAX || c->E > INT32_MAX)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_moe_experts: sizes too large");
  return ZMLX_OK;
}

/* A quantized weight's scales and biases, or (dense, or int8 without
 * biases) its own array as an input the kernel never reads. */
#define MOE_S(m) ((m)->scales ? (m)->scales : (m)->w)
#define MOE_B(m) ((m)->biases ? (m)->biases : (m)->w)


/* The forward: act (and with save the pre-activations and per-choice
 * outputs in s) and out. */
/* SIMD group per row (coalesced loads) where the device has native SIMD
 * groups, else a thread per row; ZMLX_MOE_SIMD_ROWS=0/1 overrides (the
 * check runs the SIMD form on CPUs too, through the emulation). */
static int simd_rows(zmlx_device *dev) {
  const char *env = getenv("ZMLX_MOE_SIMD_ROWS");
  if (env && (env[0] == '0' || env[0] == '1')) return env[0] == '1';
  zmlx_device_info info;
  return zmlx_device_get_info(dev, &info) == ZMLX_OK && info.native_simd;
}

/* Rows per (expert, row) looping over the expert's pairs once the batch
 * has more pairs than experts (a weight row then serves several pairs from
 * cache), else rows per pair; ZMLX_MOE_GROUPED=0/1 overrides. */
static int grouped_rows(const moe_expert_cfg *c) {
  const char *env = getenv("ZMLX_MOE_GROUPED");
  if (env && (env[0] == '0' || env[0] == '1')) return env[0] == '1';
  return c->T * c->k > c->E;
}

/* The 16-byte read of ZM_ROW_DOT (moe_rows.zk), elements a chunk, or 0 for
 * column reads: dense weights of one float dtype with rows a whole number
 * of chunks (4 f32, 8 f16 / bf16 elements), every start 16-byte aligned.
 * Quantized weights read by columns: on the H100 the chunked forms (16 int8
 * or 32 int4 a lane, serial decode) measured slower at one token (int8
 * 105 vs 79 us, int4 195 vs 137 us; bench/NOTES.md). ZMLX_MOE_VEC=0 turns
 * chunks off, =1 turns them on for quantized weights too (the check runs
 * both). */
static int weight_vec(const moe_expert_cfg *c, const moe_w *w1, const moe_w *w3, const moe_w *w2) {
  const char *env = getenv("ZMLX_MOE_VEC");
  if (env && env[0] == '0') return 0;
  const moe_w *all[3] = {w1, w3, w2};
  for (int i = 0; i < 3; i++)
    if (((size_t)all[i]->w->offset * zmlx_dtype_size(all[i]->w->dtype)) % 16) return 0;
  if (w1->bits && !(env && env[0] == '1')) return 0;
  if (w1->bits == 8) return c->H % 16 == 0 && c->I % 16 == 0 ? 16 : 0;
  if (w1->bits == 4) return 32;
  const zmlx_dtype dt = w1->w->dtype;
  if (dt != w3->w->dtype || dt != w2->w->dtype) return 0;
  const int vec = dt == ZMLX_F32 ? 4 : 8;
  return c->H % vec == 0 && c->I % vec == 0 ? vec : 0;
}

/* The down projection a row per (pair, column) then the combine, rather
 * than a row per (token, column) summing its k pairs: at few tokens the T H
 * rows of k weight rows each leave most of a GPU idle. H100, 64 experts
 * top-8, bf16 (bench/NOTES.md): one token 75.3 -> 73.7 us (graph replay
 * 72.0 -> 69.0), int8 103.8 -> 73.9 us, int4 153.1 -> 120.9 us; batches
 * unchanged. The default; ZMLX_MOE_DOWN_PAIRS=0 gives the per-token rows. */
static int down_pairs(void) {
  const char *env = getenv("ZMLX_MOE_DOWN_PAIRS");
  return !(env && env[0] == '0');
}

/* A row kernel's launch: rows threads, times the SIMD width in the SIMD
 * form, in whole threadgroups (the kernels' text names SIMD helpers, so
 * the launch checks ask for whole groups in either form). A group is 256
 * threads, or one SIMD group where SIMD is emulated (in threadgroup memory,
 * behind barriers that every thread of the group must reach equally often:
 * the grouped rows' pair loops differ from one SIMD group to the next). */
static zmlx_status launch_rows(int which, const double *params, const zmlx_template_arg *t, int nt,
                               int simd, int64_t rows, zmlx_array *const *in, int n_in,
                               zmlx_array **out, int n_out) {
  if (rows == 0) return ZMLX_OK;
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(in[0]->buffer->device, &info));
  const int group = simd && !info.native_simd ? info.simd_width : 256;
  const int64_t threads = (rows * (simd ? info.simd_width : 1) + group - 1) / group * group;
  return zmlxi_moe_launch_group(which, params, t, nt, threads, group, in, n_in, out, n_out);
}

zmlx_status zmlxi_moe_experts_forward(const moe_expert_cfg *c, zmlx_array *x, zmlx_array *weights,
                                     zmlx_array *indices, const moe_w *w1, const moe_w *w3,
                                     const moe_w *w2, int save, moe_saved *s, zmlx_array **out) {
  zmlx_device *dev = x->buffer->device;
  const int64_t P = c->T * c->k;
  memset(s, 0, sizeof *s);
  if (!save && !w1->bits && zmlxi_moe_tile_applies(c, x, w1->w, w3->w, w2->w))
    return zmlxi_moe_experts_tile(c, x, weights, indices, w1->w, w3->w, w2->w, out);
  double p[MOE_EXPERT_NPARAMS];
  const int simd = simd_rows(dev), vec = weight_vec(c, w1, w3, w2);
  zmlx_template_arg t[8] = {{"SAVE", ZMLX_TEMPLATE_BOOL, ZMLX_F32, save},
                            {"QBITS", ZMLX_TEMPLATE_INT, ZMLX_F32, w1->bits},
                            {"GROUP", ZMLX_TEMPLATE_INT, ZMLX_F32, w1->group},
                            {"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32, simd},
                            {"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, vec},
                            {"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32,
                             vec && !w1->bits ? zmlxi_ops_xdt(w1->w->dtype) : 0}};
  zmlx_status st = zmlxi_moe_alloc(dev, ZMLX_F32, P, c->I, &s->act);
  if (st == ZMLX_OK && save) st = zmlxi_moe_alloc(dev, ZMLX_F32, P, c->I, &s->pre1);
  if (st == ZMLX_OK && save) st = zmlxi_moe_alloc(dev, ZMLX_F32, P, c->I, &s->pre3);
  if (st == ZMLX_OK && save) st = zmlxi_moe_alloc(dev, ZMLX_F32, P, c->H, &s->down);
  const int grouped = grouped_rows(c);
  zmlx_array *offsets = NULL, *order = NULL, *slot = NULL;
  if (st == ZMLX_OK && grouped && !save) st = zmlxi_moe_alloc(dev, ZMLX_F32, P, c->H, &s->down);
  if (st == ZMLX_OK) st = zmlxi_moe_alloc(dev, x->dtype, c->T, c->H, out);
  if (st == ZMLX_OK && grouped) st = zmlxi_moe_dispatch(indices, c->E, &offsets, &order, &slot);
  zmlx_array *grp[2] = {offsets ? offsets : indices, order ? order : indices};
  t[6] = (zmlx_template_arg){"GROUPED", ZMLX_TEMPLATE_BOOL, ZMLX_F32, grouped};
  if (st == ZMLX_OK) {
    const int64_t rows = grouped ? c->E * c->I : P * c->I;
    zmlxi_moe_params(c, rows, p);
    zmlx_array *in[10] = {x, indices, w1->w, w3->w, MOE_S(w1), MOE_B(w1), MOE_S(w3), MOE_B(w3),
                          grp[0], grp[1]};
    zmlx_array *o[3] = {s->act, save ? s->pre1 : s->act, save ? s->pre3 : s->act};
    st = launch_rows(K_UP, p, t, 7, simd, rows, in, 10, o, 3);
  }
  const int pairs = !grouped && down_pairs();
  if (st == ZMLX_OK && pairs && !save) st = zmlxi_moe_alloc(dev, ZMLX_F32, P, c->H, &s->down);
  if (st == ZMLX_OK) {
    const int64_t rows = grouped ? c->E * c->H : (pairs ? P : c->T) * c->H;
    zmlxi_moe_params(c, rows, p);
    zmlx_array *in[8] = {s->act, indices, weights, w2->w, MOE_S(w2), MOE_B(w2), grp[0], grp[1]};
    zmlx_array *o[2] = {*out, s->down ? s->down : *out};
    t[7] = (zmlx_template_arg){"PAIRS", ZMLX_TEMPLATE_BOOL, ZMLX_F32, pairs};
    st = launch_rows(K_DOWN, p, t, 8, simd, rows, in, 8, o, 2);
  }
  if (st == ZMLX_OK && (grouped || pairs)) {
    zmlxi_moe_params(c, c->T * c->H, p);
    zmlx_array *in[2] = {weights, indices}, *o[2] = {*out, s->down};
    st = zmlxi_moe_launch(K_COMBINE, p, NULL, 0, c->T * c->H, in, 2, o, 2);
  }
  zmlx_array_release(offsets);
  zmlx_array_release(order);
  zmlx_array_release(slot);
  if (st == ZMLX_OK && (grouped || pairs) && !save) {
    zmlx_array_release(s->down);
    s->down = NULL;
  }
  if (st != ZMLX_OK) {
    zmlxi_moe_saved_free(s);
    zmlx_array_release(*out);
    *out = NULL;
  }
  return st;
}

void zmlxi_moe_saved_free(moe_saved *s) {
  zmlx_array *a[4] = {s->act, s->pre1, s->pre3, s->down};
  zmlxi_moe_release(a, 4);
  memset(s, 0, sizeof *s);
}

typedef struct experts_ctx {
  moe_expert_cfg c;
  moe_saved s;
} experts_ctx;

static void experts_ctx_free(void *p) {
  experts_ctx *x = p;
  if (x) zmlxi_moe_saved_free(&x->s);
  free(x);
}

/* Inputs of the node: x, weights, w1, w3, w2 (indices: a constant, kept
 * as input 5 but never differentiated). */
static zmlx_status experts_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                               zmlx_array **grads) {
  const experts_ctx *x = n->ctx;
  const moe_expert_cfg *c = &x->c;
  zmlx_array *xs = n->in[0], *weights = n->in[1], *w1 = n->in[2], *w3 = n->in[3], *w2 = n->in[4];
  zmlx_array *indices = NULL, *w1r = NULL, *w3r = NULL;
  zmlx_device *dev = xs->buffer->device;
  const int64_t P = c->T * c->k;
  zmlx_array *dy = NULL, *da = NULL, *db = NULL, *offsets = NULL, *order = NULL, *slot = NULL;
  double p[MOE_EXPERT_NPARAMS];
  zmlx_status st = zmlxi_ad_cast(cot[0], ZMLX_F32, &dy);
  if (st == ZMLX_OK) st = zmlx_array_contiguous(n->in[5], &indices);
  if (st == ZMLX_OK && need[0]) st = w13_rows(w1, c, &w1r);
  if (st == ZMLX_OK && need[0]) st = w13_rows(w3, c, &w3r);
  if (st == ZMLX_OK && need[1]) {
    st = zmlxi_moe_alloc(dev, ZMLX_F32, c->T, c->k, &grads[1]);
    zmlxi_moe_params(c, P, p);
    zmlx_array *in[2] = {dy, x->s.down};
    if (st == ZMLX_OK) st = zmlxi_moe_launch(K_BWD_WEIGHTS, p, NULL, 0, P, in, 2, &grads[1], 1);
  }
  const int need_act = need[0] || need[2] || need[3];
  if (st == ZMLX_OK && need_act) {
    st = zmlxi_moe_alloc(dev, ZMLX_F32, P, c->I, &da);
    if (st == ZMLX_OK) st = zmlxi_moe_alloc(dev, ZMLX_F32, P, c->I, &db);
    zmlxi_moe_params(c, P * c->I, p);
    zmlx_array *in[6] = {dy, indices, weights, w2, x->s.pre1, x->s.pre3}, *o[2] = {da, db};
    if (st == ZMLX_OK) st = zmlxi_moe_launch(K_BWD_ACT, p, NULL, 0, P * c->I, in, 6, o, 2);
  }
  if (st == ZMLX_OK && need[0]) {
    st = zmlxi_moe_alloc(dev, ZMLX_F32, c->T, c->H, &grads[0]);
    zmlxi_moe_params(c, c->T * c->H, p);
    zmlx_array *in[5] = {da, db, indices, w1r, w3r};
    if (st == ZMLX_OK) st = zmlxi_moe_launch(K_BWD_DX, p, NULL, 0, c->T * c->H, in, 5, &grads[0], 1);
  }
  if (st == ZMLX_OK && (need[2] || need[3] || need[4]))
    st = zmlxi_moe_dispatch(indices, c->E, &offsets, &order, &slot);
  if (st == ZMLX_OK && (need[2] || need[3])) {
    int64_t sh[3] = {c->E, c->I, c->H};
    st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 3, sh, &grads[2]);
    if (st == ZMLX_OK) st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 3, sh, &grads[3]);
    zmlxi_moe_params(c, c->E * c->I * c->H, p);
    zmlx_array *in[5] = {da, db, xs, offsets, order}, *o[2] = {grads[2], grads[3]};
    if (st == ZMLX_OK) st = zmlxi_moe_launch(K_BWD_W13, p, NULL, 0, c->E * c->I * c->H, in, 5, o, 2);
  }
  if (st == ZMLX_OK && need[4]) {
    int64_t sh[3] = {c->E, c->H, c->I};
    st = zmlxi_array_alloc(dev, NULL, ZMLX_F32, 3, sh, &grads[4]);
    zmlxi_moe_params(c, c->E * c->H * c->I, p);
    zmlx_array *in[5] = {dy, x->s.act, weights, offsets, order};
    if (st == ZMLX_OK) st = zmlxi_moe_launch(K_BWD_W2, p, NULL, 0, c->E * c->H * c->I, in, 5, &grads[4], 1);
  }
  zmlx_array *tmp[9] = {dy, da, db, offsets, order, slot, indices, w1r, w3r};
  zmlxi_moe_release(tmp, 9);
  if (st != ZMLX_OK) zmlxi_moe_release(grads, 5);
  return st;
}

static const zmlx_ad_rule EXPERTS_RULE = {"moe_experts", experts_vjp, NULL, experts_ctx_free};

zmlx_status zmlx_moe_experts(zmlx_array *x, zmlx_array *weights, zmlx_array *indices,
                             zmlx_array *w1, zmlx_array *w3, zmlx_array *w2, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  moe_expert_cfg c;
  ZMLX_CHECK(zmlxi_moe_experts_validate(x, weights, indices, w1, w3, w2, &c));
  zmlx_array *in[6] = {x, weights, w1, w3, w2, indices};
  if (zmlxi_moe_use_gemm(&c, x, in, 5))
    return zmlxi_moe_experts_gemm(&c, x, weights, indices, w1, w3, w2, out);
  zmlx_array *dense[6] = {0};
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < 6 && st == ZMLX_OK; i++)
    st = i == 2 || i == 3 ? w13_rows(in[i], &c, &dense[i]) : zmlx_array_contiguous(in[i], &dense[i]);
  const int save = st == ZMLX_OK && zmlxi_ad_should_record(in, 5);
  moe_saved s;
  memset(&s, 0, sizeof s);
  zmlx_array *y = NULL;
  const moe_w m1 = {dense[2], NULL, NULL, 0, 0}, m3 = {dense[3], NULL, NULL, 0, 0},
              m2 = {dense[4], NULL, NULL, 0, 0};
  if (st == ZMLX_OK)
    st = zmlxi_moe_experts_forward(&c, dense[0], dense[1], dense[5], &m1, &m3, &m2, save, &s, &y);
  experts_ctx *ctx = NULL;
  if (st == ZMLX_OK && save) {
    ctx = malloc(sizeof *ctx);
    if (!ctx) st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_moe_experts: out of memory");
  }
  if (st == ZMLX_OK && save) {
    ctx->c = c;
    ctx->s = s;
    memset(&s, 0, sizeof s);
    /* the node's inputs are the caller's arrays (their gradients), its
     * kept copies the dense ones the kernels read */
    st = zmlxi_ad_record(&EXPERTS_RULE, ctx, in, 6, &y, 1, ZMLX_AD_SAVE_INPUTS);
  }
  zmlxi_moe_saved_free(&s);
  zmlxi_moe_release(dense, 6);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}

/* ---------------------------------------------------- quantized experts */

/* A quantized weight of `rows` x `cols` per expert (E experts). */
static zmlx_status qweight_check(const char *name, const zmlx_moe_qweight *w, int64_t E,
                                 int64_t rows, int64_t cols, zmlx_array *x, moe_w *m) {
  char a[96], b[96];
  if (!w || !w->q || !w->scales)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_moe_experts_quantized: %s needs q and scales", name);
  const int four = w->bits == 4;
  if (w->bits != 8 && !four)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: %s has bits %d (8 or 4)",
                     name, w->bits);
  if (four && w->group_size != 32 && w->group_size != 64 && w->group_size != 128)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: %s has group_size %d "
                     "(32, 64 or 128)", name, w->group_size);
  if (four && (cols % w->group_size || !w->biases))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: %s: int4 needs biases and cols "
                     "%lld a multiple of group_size %d", name, (long long)cols, w->group_size);
  const int64_t qs[3] = {E, rows, four ? cols / 2 : cols};
  const int64_t ss[3] = {E, rows, four ? cols / w->group_size : 1};
  const zmlx_array *q = w->q, *sc = w->scales;
  if (q->ndim != 3 || memcmp(q->shape, qs, sizeof qs) || q->dtype != (four ? ZMLX_U8 : ZMLX_I8))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: %s.q is %s %s, want %s %s", name,
                     zmlxi_shape_str(a, sizeof a, q->ndim, q->shape), zmlx_dtype_name(q->dtype),
                     zmlxi_shape_str(b, sizeof b, 3, qs), four ? "u8" : "i8");
  const int sn = four ? 3 : 2;
  for (const zmlx_array *v = sc; v; v = v == sc && four ? w->biases : NULL)
    if (v->ndim != sn || memcmp(v->shape, ss, sizeof(int64_t) * (size_t)sn) ||
        !zmlxi_dtype_is_f32_f16_bf16(v->dtype))
      return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: %s's scales / biases %s %s, "
                       "want %s (float)", name, zmlxi_shape_str(a, sizeof a, v->ndim, v->shape),
                       zmlx_dtype_name(v->dtype), zmlxi_shape_str(b, sizeof b, sn, ss));
  if (q->buffer->device != x->buffer->device || sc->buffer->device != x->buffer->device ||
      (four && w->biases->buffer->device != x->buffer->device))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: %s and x live on "
                     "different devices", name);
  *m = (moe_w){w->q, w->scales, four ? w->biases : NULL, w->bits, four ? w->group_size : 0};
  return ZMLX_OK;
}

zmlx_status zmlx_moe_experts_quantized(zmlx_array *x, zmlx_array *weights, zmlx_array *indices,
                                       const zmlx_moe_qweight *w1, const zmlx_moe_qweight *w3,
                                       const zmlx_moe_qweight *w2, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(w1);
  ZMLX_REQUIRE_ARG(w3);
  ZMLX_REQUIRE_ARG(w2);
  if (!w1->q || !w1->q->ndim)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_moe_experts_quantized: w1.q must be [experts, "
                     "inter, hidden%s]", w1->bits == 4 ? " / 2" : "");
  if (w3->bits != w1->bits || w2->bits != w1->bits || w3->group_size != w1->group_size ||
      w2->group_size != w1->group_size)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: w1, w3, w2 must share one "
                     "format (bits %d / %d / %d, group_size %d / %d / %d)", w1->bits, w3->bits,
                     w2->bits, w1->group_size, w3->group_size, w2->group_size);
  moe_expert_cfg c;
  memset(&c, 0, sizeof c);
  ZMLX_REQUIRE_ARG(x);
  ZMLX_REQUIRE_ARG(weights);
  ZMLX_REQUIRE_ARG(indices);
  if (x->ndim != 2 || w1->q->ndim != 3)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: x must be [tokens, hidden] "
                     "and w1.q [experts, inter, ...]");
  c.T = x->shape[0], c.H = x->shape[1], c.E = w1->q->shape[0], c.I = w1->q->shape[1];
  moe_w m1, m3, m2;
  ZMLX_CHECK(qweight_check("w1", w1, c.E, c.I, c.H, x, &m1));
  ZMLX_CHECK(qweight_check("w3", w3, c.E, c.I, c.H, x, &m3));
  ZMLX_CHECK(qweight_check("w2", w2, c.E, c.H, c.I, x, &m2));
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype) || indices->ndim != 2 || indices->shape[0] != c.T ||
      indices->dtype != ZMLX_I32 || weights->ndim != 2 || weights->shape[0] != c.T ||
      weights->shape[1] != indices->shape[1] || !zmlxi_dtype_is_f32_f16_bf16(weights->dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe_experts_quantized: x (float), weights and indices "
                     "[tokens %lld, k] (float, i32)", (long long)c.T);
  c.k = (int)indices->shape[1];
  if (c.k < 1 || c.k > ZMLX_MOE_MAX_K || c.k > c.E)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe_experts_quantized: k = %d with %lld experts",
                     c.k, (long long)c.E);
  zmlx_array *tracked[2] = {x, weights};
  if (zmlxi_ad_should_record(tracked, 2))
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_moe_experts_quantized: not differentiable "
                     "(inference only); use zmlx_moe_experts on dequantized weights for gradients");
  /* the up-projection kernel reads its inputs in place: dense copies of
   * strided ones (the others copy what they need at launch) */
  zmlx_array *src[8] = {x, indices, m1.w, m1.scales, m1.biases, m3.w, m3.scales, m3.biases};
  zmlx_array *dense[8] = {0};
  zmlx_status st = ZMLX_OK;
  for (int i = 0; i < 8 && st == ZMLX_OK; i++)
    if (src[i]) st = zmlx_array_contiguous(src[i], &dense[i]);
  moe_saved s;
  memset(&s, 0, sizeof s);
  m1.w = dense[2], m1.scales = dense[3], m1.biases = dense[4];
  m3.w = dense[5], m3.scales = dense[6], m3.biases = dense[7];
  if (st == ZMLX_OK)
    st = zmlxi_moe_experts_forward(&c, dense[0], weights, dense[1], &m1, &m3, &m2, 0, &s, out);
  zmlxi_moe_saved_free(&s);
  zmlxi_moe_release(dense, 8);
  return st;
}

/* --------------------------------------------------------------- layer */

static zmlx_status shared_expert(zmlx_array *x, const zmlx_moe_opts *o, zmlx_array **out) {
  zmlx_array *t1 = NULL, *t3 = NULL, *t2 = NULL, *a = NULL, *b = NULL, *h = NULL;
  zmlx_status st = zmlx_transpose(o->shared_w1, NULL, &t1);
  if (st == ZMLX_OK) st = zmlx_transpose(o->shared_w3, NULL, &t3);
  if (st == ZMLX_OK) st = zmlx_transpose(o->shared_w2, NULL, &t2);
  if (st == ZMLX_OK) st = zmlx_matmul(x, t1, &a);
  if (st == ZMLX_OK) st = zmlx_matmul(x, t3, &b);
  if (st == ZMLX_OK) st = zmlx_swiglu(a, b, &h);
  if (st == ZMLX_OK) st = zmlx_matmul(h, t2, out);
  zmlx_array *tmp[6] = {t1, t3, t2, a, b, h};
  zmlxi_moe_release(tmp, 6);
  return st;
}

zmlx_status zmlx_moe(zmlx_array *x, zmlx_array *router, zmlx_array *w1, zmlx_array *w3,
                     zmlx_array *w2, const zmlx_moe_opts *opts, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(x);
  ZMLX_REQUIRE_ARG(router);
  char a[96], b[96];
  zmlx_moe_opts o = {0};
  if (opts) {
    if (opts->struct_size != 0 && opts->struct_size != sizeof o)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_moe: opts->struct_size is %zu, this "
                       "library's zmlx_moe_opts has %zu bytes", opts->struct_size, sizeof o);
    o = *opts;
  }
  if (x->ndim != 2 || router->ndim != 2 || router->shape[1] != x->shape[1])
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_moe: x %s must be [tokens, hidden] and router %s "
                     "[experts, hidden]", zmlxi_shape_str(a, sizeof a, x->ndim, x->shape),
                     zmlxi_shape_str(b, sizeof b, router->ndim, router->shape));
  const int shared = o.shared_w1 || o.shared_w3 || o.shared_w2;
  if (shared && (!o.shared_w1 || !o.shared_w3 || !o.shared_w2))
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlx_moe: a shared expert needs shared_w1, shared_w3 "
                     "and shared_w2");
  zmlx_array *rt = NULL, *logits = NULL, *w = NULL, *ix = NULL, *y = NULL, *s = NULL;
  zmlx_status st = zmlx_transpose(router, NULL, &rt); /* recorded: router gets its gradient */
  if (st == ZMLX_OK) st = zmlx_matmul(x, rt, &logits);
  if (st == ZMLX_OK) st = zmlx_moe_gate(logits, &o.gate, &w, &ix);
  if (st == ZMLX_OK) st = zmlx_moe_experts(x, w, ix, w1, w3, w2, &y);
  if (st == ZMLX_OK && shared) st = shared_expert(x, &o, &s);
  if (st == ZMLX_OK && shared) st = zmlx_add(y, s, out);
  else if (st == ZMLX_OK) *out = y, y = NULL;
  zmlx_array *tmp[6] = {rt, logits, w, ix, y, s};
  zmlxi_moe_release(tmp, 6);
  return st;
}
