/* `zmlx check` cases of src/nn/embedding.c: rows gathered by id (exact),
 * ids outside [0, V) giving zero rows, the table gradient against an f64
 * per-row sum (repeated ids, ids no token uses, a frequent id), finite
 * differences, i32 and i64 ids of any rank, bad input. Part of the check
 * library (the CLI and the tests link it; libzmlx does not). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check/check_util.h"

typedef struct emb_case {
  int64_t V, D, B, S; /* table [V, D], ids [B, S] */
  int ids_i64;
  int skew;           /* half the ids are id 0: one long group in the backward */
  int out_of_range;   /* some ids are -1 or V */
} emb_case;

typedef struct emb_gctx {
  zmlx_array *ids, *w; /* w: the weights of the finite-difference loss */
} emb_gctx;

static zmlx_status emb_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)n;
  return zmlx_embedding(in[0], ((emb_gctx *)ud)->ids, out);
}

/* sum(w * embedding(table)): a scalar for zmlx_check_grad */
static zmlx_status emb_loss(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  zmlx_array *y = NULL;
  ZMLX_CHECK(emb_fn(ud, in, n, &y));
  zmlx_status st = zck_weighted_sum(y, ((emb_gctx *)ud)->w, out);
  zmlx_array_release(y);
  return st;
}

/* Random ids per the case, uploaded in the case's dtype; host copy in ids. */
static zmlx_status make_ids(zmlx_device *dev, const emb_case *c, uint64_t *rng, int64_t *ids,
                            zmlx_array **out) {
  const int64_t T = c->B * c->S;
  for (int64_t t = 0; t < T; t++) {
    int64_t v = (int64_t)zck_uniform(rng, 0, (double)c->V);
    if (v >= c->V) v = c->V - 1;
    if (c->skew && zck_uniform(rng, 0, 1) < 0.5) v = 0;
    if (c->out_of_range && t % 5 == 3) v = (t % 10 == 3) ? -1 : c->V;
    ids[t] = v;
  }
  int64_t sh[2] = {c->B, c->S};
  if (c->ids_i64) return zmlx_array_from_host(dev, ZMLX_I64, 2, sh, ids, out);
  int32_t *i32 = malloc(sizeof(int32_t) * (size_t)(T ? T : 1));
  if (!i32) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t t = 0; t < T; t++) i32[t] = (int32_t)ids[t];
  zmlx_status st = zmlx_array_from_host(dev, ZMLX_I32, 2, sh, i32, out);
  free(i32);
  return st;
}

static void emb_case_run(const zmlx_check_opts *o, const emb_case *c, uint64_t *rng) {
  zmlx_device *dev = o->device;
  zmlx_dtype dt = o->dtype;
  const int64_t T = c->B * c->S, V = c->V, D = c->D;
  char name[96];
  snprintf(name, sizeof name, "V=%lld D=%lld [%lld, %lld] %s%s%s", (long long)V, (long long)D,
           (long long)c->B, (long long)c->S, c->ids_i64 ? "i64" : "i32", c->skew ? " skewed" : "",
           c->out_of_range ? " bad ids" : "");
  int64_t tsh[2] = {V, D}, gsh[3] = {c->B, c->S, D};
  int64_t *ids = malloc(sizeof(int64_t) * (size_t)(T ? T : 1));
  double *tab = malloc(sizeof(double) * (size_t)(V * D)), *g = malloc(sizeof(double) * (size_t)(T * D + 1));
  double *want = calloc((size_t)(V * D + T * D + 1), sizeof(double));
  double *terms = calloc((size_t)(V * D + 1), sizeof(double));
  double *got = NULL;
  int64_t *count = calloc((size_t)V, sizeof(int64_t));
  zmlx_array *at = NULL, *ai = NULL, *ag = NULL, *y = NULL, *grad = NULL;
  zmlx_status st = ZMLX_OK;
  const char *what = "fwd";
  if (!ids || !tab || !g || !want || !terms || !count) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  if ((st = zck_random(dev, dt, 2, tsh, -2, 2, rng, tab, &at)) != ZMLX_OK) goto done;
  if ((st = make_ids(dev, c, rng, ids, &ai)) != ZMLX_OK) goto done;
  /* forward: a gather is exact; an id outside [0, V) is a zero row */
  zck_poison_pool(dev, dt, 3, gsh);
  if ((st = zmlx_embedding(at, ai, &y)) != ZMLX_OK || (st = zck_download(y, &got)) != ZMLX_OK)
    goto done;
  for (int64_t t = 0; t < T; t++)
    for (int64_t h = 0; h < D; h++)
      want[t * D + h] = (ids[t] >= 0 && ids[t] < V) ? tab[ids[t] * D + h] : 0.0;
  double err, tol;
  int ok = zck_within(got, want, T * D, (zck_bound){0, 0, 0}, &err, &tol);
  int shape_ok = zmlx_array_ndim(y) == 3 && zmlx_array_shape(y)[2] == D;
  zck_emit(o, "embedding", "fwd", dt, name, shape_ok ? err : INFINITY, 0, ok && shape_ok);
  free(got);
  got = NULL;
  zmlx_array_release(y);
  y = NULL;
  /* table gradient: each row the sum of its tokens' cotangent rows */
  what = "grad (vjp)";
  if ((st = zck_random(dev, dt, 3, gsh, -1, 1, rng, g, &ag)) != ZMLX_OK) goto done;
  memset(want, 0, sizeof(double) * (size_t)(V * D));
  int64_t longest = 1;
  for (int64_t t = 0; t < T; t++) {
    if (ids[t] < 0 || ids[t] >= V) continue;
    if (++count[ids[t]] > longest) longest = count[ids[t]];
    for (int64_t h = 0; h < D; h++) {
      want[ids[t] * D + h] += g[t * D + h];
      terms[ids[t] * D + h] += fabs(g[t * D + h]);
    }
  }
  zck_poison_pool(dev, dt, 2, tsh);
  int argn = 0;
  emb_gctx gc = {ai, ag};
  st = zmlx_vjp(emb_fn, &gc, &at, 1, &argn, 1, ag, &y, &grad);
  if (st == ZMLX_OK) st = zck_download(grad, &got);
  if (st != ZMLX_OK) goto done;
  ok = zck_within_scaled(got, want, terms, V * D, zck_bound_sum(ZCK_TOL_ELEMENTWISE, dt, longest),
                         &err, &tol);
  zck_emit(o, "embedding", what, dt, name, err, tol, ok);
  /* finite differences through the whole recorded op (f32, small cases) */
  if (dt == ZMLX_F32 && V * D <= 4096) {
    what = "grad (fd)";
    zmlx_grad_check_report rep;
    st = zmlx_check_grad(emb_loss, &gc, &at, 1, 1e-3, zck_fd_tol(), &rep);
    if (st != ZMLX_OK) goto done;
    zck_emit(o, "embedding", what, dt, name, rep.inputs[0].max_abs_err, zck_fd_tol(), rep.passed);
  }
done:
  if (st != ZMLX_OK) zck_emit_fail(o, "embedding", what, dt, name, st);
  free(ids), free(tab), free(g), free(want), free(terms), free(got), free(count);
  zmlx_array_release(at), zmlx_array_release(ai), zmlx_array_release(ag);
  zmlx_array_release(y), zmlx_array_release(grad);
  zmlx_clear_error();
}

static void emb_bad_input(const zmlx_check_opts *o) {
  zmlx_array *tab = NULL, *tab1 = NULL, *tabi = NULL, *ids = NULL, *idsf = NULL, *y = NULL;
  int64_t sh[2] = {4, 3}, s1[1] = {4};
  if (zmlx_array_zeros(o->device, o->dtype, 2, sh, &tab) != ZMLX_OK ||
      zmlx_array_zeros(o->device, o->dtype, 1, s1, &tab1) != ZMLX_OK ||
      zmlx_array_zeros(o->device, ZMLX_I32, 2, sh, &tabi) != ZMLX_OK ||
      zmlx_array_zeros(o->device, ZMLX_I32, 1, s1, &ids) != ZMLX_OK ||
      zmlx_array_zeros(o->device, ZMLX_F32, 1, s1, &idsf) != ZMLX_OK) {
    zck_emit_fail(o, "embedding", "bad input", o->dtype, "setup", ZMLX_ERR_BACKEND);
  } else {
    zck_expect(o, "embedding", "bad: table not 2-D", zmlx_embedding(tab1, ids, &y), y,
               ZMLX_ERR_SHAPE, "[V, D]");
    y = NULL;
    zck_expect(o, "embedding", "bad: table i32", zmlx_embedding(tabi, ids, &y), y, ZMLX_ERR_DTYPE,
               "dtype");
    y = NULL;
    zck_expect(o, "embedding", "bad: ids f32", zmlx_embedding(tab, idsf, &y), y, ZMLX_ERR_DTYPE,
               "i32 or i64");
    y = NULL;
    zck_expect(o, "embedding", "bad: NULL ids", zmlx_embedding(tab, NULL, &y), y,
               ZMLX_ERR_NULL_ARG, "ids");
  }
  zmlx_array_release(tab), zmlx_array_release(tab1), zmlx_array_release(tabi);
  zmlx_array_release(ids), zmlx_array_release(idsf);
  zmlx_clear_error();
}

static zmlx_status check_embedding(const zmlx_check_opts *o) {
  ZMLX_REQUIRE_ARG(o);
  ZMLX_REQUIRE_ARG(o->device);
  uint64_t rng = o->seed * 0x9E3779B97F4A7C15ULL + 0x656D62ULL;
  if (!rng) rng = 1;
  const emb_case cases[] = {
      {1, 1, 1, 1, 0, 0, 0},      {7, 5, 2, 3, 1, 0, 1},   {256, 64, 4, 33, 0, 1, 0},
      {300, 17, 3, 50, 1, 0, 1},  {50, 128, 1, 1, 0, 0, 0}, {1000, 96, 8, 64, 0, 1, 1},
  };
  size_t n = sizeof cases / sizeof cases[0];
  for (size_t i = 0; i < n; i++)
    if (!o->quick || cases[i].V * cases[i].D <= 20000) emb_case_run(o, &cases[i], &rng);
  emb_bad_input(o);
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_embedding_ops[] = {
    {"embedding", check_embedding},
    {0},
};
