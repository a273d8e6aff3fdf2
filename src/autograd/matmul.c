/* zmlx_matmul and its gradient rule over a pluggable GEMM.
 *
 *   C = A @ B          dA = dC @ B^T        dB = A^T @ dC
 *
 * The rule is written with zmlx_matmul and zmlx_transpose, so it records
 * itself under grad of grad, and the GEMM behind every product — forward
 * and backward — is whatever zmlx_set_gemm installed (the built-in dialect
 * kernel by default; cuBLAS / CLBlast later). Batch axes broadcast; the
 * gradient of a broadcast operand is summed back by the accumulator. */
#include "autograd/ad.h"

#include <pthread.h>
#include <string.h>

static pthread_mutex_t gemm_lock = PTHREAD_MUTEX_INITIALIZER;
static zmlx_gemm_fn gemm_fn = zmlxi_ad_kernel_gemm;
static void *gemm_ctx;

zmlx_status zmlx_set_gemm(zmlx_gemm_fn fn, void *ctx) {
  pthread_mutex_lock(&gemm_lock);
  gemm_fn = fn ? fn : zmlxi_ad_kernel_gemm;
  gemm_ctx = fn ? ctx : NULL;
  pthread_mutex_unlock(&gemm_lock);
  return ZMLX_OK;
}

static zmlx_status run_gemm(zmlx_array *a, zmlx_array *b, zmlx_array *out) {
  pthread_mutex_lock(&gemm_lock);
  zmlx_gemm_fn fn = gemm_fn;
  void *ctx = gemm_ctx;
  pthread_mutex_unlock(&gemm_lock);
  return fn(ctx, a, b, out);
}

/* -------------------------------------------------------------- geometry */

typedef struct mm_shape {
  int nb; /* batch dims */
  int64_t batch[ZMLX_MAX_DIMS];
  int64_t m, k, n;
} mm_shape;

static zmlx_status mm_check(const zmlx_array *a, const zmlx_array *b, mm_shape *s) {
  char b1[200], b2[200];
  zmlxi_shape_str(b1, sizeof b1, a->ndim, a->shape);
  zmlxi_shape_str(b2, sizeof b2, b->ndim, b->shape);
  if (a->ndim < 2 || b->ndim < 2 || a->shape[a->ndim - 1] != b->shape[b->ndim - 2])
    return zmlxi_fail(ZMLX_ERR_SHAPE, "matmul: %s @ %s: need [..., M, K] @ [..., K, N]", b1, b2);
  if (a->buffer->device != b->buffer->device)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "matmul: the operands live on different devices");
  s->m = a->shape[a->ndim - 2];
  s->k = a->shape[a->ndim - 1];
  s->n = b->shape[b->ndim - 1];
  int na = a->ndim - 2, nb = b->ndim - 2;
  s->nb = na > nb ? na : nb;
  for (int d = 0; d < s->nb; d++) {
    int ka = d - (s->nb - na), kb = d - (s->nb - nb);
    int64_t x = ka >= 0 ? a->shape[ka] : 1, y = kb >= 0 ? b->shape[kb] : 1;
    if (x != y && x != 1 && y != 1)
      return zmlxi_fail(ZMLX_ERR_SHAPE, "matmul: batch axes of %s and %s do not broadcast", b1, b2);
    s->batch[d] = x == 1 ? y : x;
  }
  return ZMLX_OK;
}

/* `a` seen as [batch..., rows, cols] with stride 0 on broadcast batch axes. */
static zmlx_status batch_view(zmlx_array *a, const mm_shape *s, zmlx_array **out) {
  int nd = s->nb + 2, lead = nd - a->ndim;
  int64_t shape[ZMLX_MAX_DIMS], strides[ZMLX_MAX_DIMS];
  for (int d = 0; d < nd; d++) {
    int k = d - lead;
    shape[d] = d < s->nb ? s->batch[d] : a->shape[k];
    strides[d] = k < 0 || (d < s->nb && a->shape[k] != shape[d]) ? 0 : a->strides[k];
  }
  return zmlxi_array_make_view(a, nd, shape, strides, a->offset, out);
}

static zmlx_status mm_forward(zmlx_array *a, zmlx_array *b, const mm_shape *s, zmlx_array **out) {
  int64_t shape[ZMLX_MAX_DIMS];
  memcpy(shape, s->batch, (size_t)s->nb * sizeof *shape);
  shape[s->nb] = s->m;
  shape[s->nb + 1] = s->n;
  zmlx_dtype dt = a->dtype == b->dtype ? a->dtype : ZMLX_F32;
  zmlx_array *av = NULL, *bv = NULL;
  zmlx_status st = zmlxi_array_alloc(a->buffer->device, NULL, dt, s->nb + 2, shape, out);
  if (st == ZMLX_OK) st = batch_view(a, s, &av);
  if (st == ZMLX_OK) st = batch_view(b, s, &bv);
  if (st == ZMLX_OK && (*out)->size) st = run_gemm(av, bv, *out);
  zmlx_array_release(av);
  zmlx_array_release(bv);
  if (st != ZMLX_OK) zmlxi_ad_release_all(out, 1);
  return st;
}

/* ------------------------------------------------------------------ rule */

static zmlx_status swap_last2(zmlx_array *a, zmlx_array **out) {
  int perm[ZMLX_MAX_DIMS];
  for (int d = 0; d < a->ndim; d++) perm[d] = d;
  perm[a->ndim - 2] = a->ndim - 1;
  perm[a->ndim - 1] = a->ndim - 2;
  return zmlx_transpose(a, perm, out);
}

/* x @ y^T, or x^T @ y when transpose_x. */
static zmlx_status product_with_t(zmlx_array *x, zmlx_array *y, int transpose_x,
                                  zmlx_array **out) {
  zmlx_array *t = NULL;
  ZMLX_CHECK(swap_last2(transpose_x ? x : y, &t));
  zmlx_status st = transpose_x ? zmlx_matmul(t, y, out) : zmlx_matmul(x, t, out);
  zmlx_array_release(t);
  return st;
}

static zmlx_status matmul_vjp(const zmlx_ad_node *n, zmlx_array *const *cot, const uint8_t *need,
                              zmlx_array **grads) {
  zmlx_status st = ZMLX_OK;
  if (need[0]) st = product_with_t(cot[0], n->in[1], 0, &grads[0]);
  if (need[1] && st == ZMLX_OK) st = product_with_t(n->in[0], cot[0], 1, &grads[1]);
  return st;
}

static zmlx_status matmul_jvp(const zmlx_ad_node *n, zmlx_array *const *tan, zmlx_array **out) {
  zmlx_array *p = NULL, *q = NULL;
  zmlx_status st = ZMLX_OK;
  if (tan[0]) st = zmlx_matmul(tan[0], n->in[1], &p);
  if (tan[1] && st == ZMLX_OK) st = zmlx_matmul(n->in[0], tan[1], &q);
  if (st == ZMLX_OK && p && q) {
    st = zmlx_add(p, q, &out[0]);
  } else if (st == ZMLX_OK) { /* one term (or none: a zero tangent) */
    out[0] = p ? p : q;
    p = q = NULL;
  }
  zmlx_array_release(p);
  zmlx_array_release(q);
  return st;
}

static const zmlx_ad_rule MATMUL_RULE = {"matmul", matmul_vjp, matmul_jvp, NULL};

zmlx_status zmlx_matmul(zmlx_array *a, zmlx_array *b, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(a);
  ZMLX_REQUIRE_ARG(b);
  mm_shape s;
  ZMLX_CHECK(mm_check(a, b, &s));
  ZMLX_CHECK(mm_forward(a, b, &s, out));
  zmlx_array *in[2] = {a, b};
  zmlx_status st = zmlxi_ad_record(&MATMUL_RULE, NULL, in, 2, out, 1, ZMLX_AD_SAVE_INPUTS);
  if (st != ZMLX_OK) zmlxi_ad_release_all(out, 1);
  return st;
}
