/* `zmlx check` cases of zmlx_matmul (src/autograd/matmul.c over the
 * device's library GEMM, CLBlast / cuBLAS, or the dialect GEMM): products
 * at odd sizes (1, 7, 33, 1000, 4097 along each axis), stored-transposed
 * operands, batches and broadcast batch axes, every float dtype, against
 * an f64 reference; the VJP (dA = G B^T, dB = A^T G) through autograd;
 * which GEMM ran (a path row); bad input naming both shapes. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ad.h"
#include "check/check_util.h"

typedef struct mm_case {
  int64_t m, k, n;
  int trans_a, trans_b; /* the operand is a transposed view of a stored [K, M] / [N, K] */
  int64_t ba, bb;       /* batch of a and b: 0 none; a [ba, 1, M, K] @ b [bb, K, N] */
} mm_case;

/* x as the logical [rows, cols] (row-major values v) on the device, as a
 * transposed view of the stored [cols, rows] when `trans`. */
static zmlx_status operand(zmlx_device *dev, zmlx_dtype dt, int nd, const int64_t *shape, int trans,
                           const double *v, zmlx_array **out) {
  if (!trans) return zck_upload(dev, dt, nd, shape, v, out);
  int64_t st[4];
  memcpy(st, shape, sizeof(int64_t) * (size_t)nd);
  st[nd - 2] = shape[nd - 1];
  st[nd - 1] = shape[nd - 2];
  int64_t rows = shape[nd - 2], cols = shape[nd - 1], batch = 1;
  for (int i = 0; i < nd - 2; i++) batch *= shape[i];
  double *t = malloc(sizeof(double) * (size_t)(batch * rows * cols + 1));
  if (!t) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  for (int64_t b = 0; b < batch; b++)
    for (int64_t r = 0; r < rows; r++)
      for (int64_t c = 0; c < cols; c++) t[(b * cols + c) * rows + r] = v[(b * rows + r) * cols + c];
  zmlx_array *s = NULL;
  zmlx_status st_ = zck_upload(dev, dt, nd, st, t, &s);
  free(t);
  int perm[4] = {0, 1, 2, 3};
  perm[nd - 2] = nd - 1;
  perm[nd - 1] = nd - 2;
  if (st_ == ZMLX_OK) st_ = zmlx_array_transpose(s, perm, out);
  zmlx_array_release(s);
  return st_;
}

typedef struct mm_fn_data {
  zmlx_array *w;
} mm_fn_data;

static zmlx_status mm_fn(void *ud, zmlx_array *const *in, int n, zmlx_array **out) {
  (void)ud;
  (void)n;
  return zmlx_matmul(in[0], in[1], out);
}

static void mm_case_run(const zmlx_check_opts *o, const mm_case *c, int grads, uint64_t *rng) {
  const zmlx_dtype dt = o->dtype;
  char name[96];
  snprintf(name, sizeof name, "%s[%lld, %lld]%s @ %s[%lld, %lld]%s", c->ba ? "[B, 1] " : "",
           (long long)c->m, (long long)c->k, c->trans_a ? "^T" : "", c->bb ? "[B] " : "",
           (long long)c->k, (long long)c->n, c->trans_b ? "^T" : "");
  const int64_t BA = c->ba ? c->ba : 1, BB = c->bb ? c->bb : 1;
  int64_t ash[4] = {BA, 1, c->m, c->k}, bsh[3] = {BB, c->k, c->n};
  const int and_ = c->ba ? 4 : 2, bnd = c->bb ? 3 : 2;
  const int64_t *as = c->ba ? ash : ash + 2, *bs = c->bb ? bsh : bsh + 1;
  const int64_t na = BA * c->m * c->k, nb = BB * c->k * c->n, nout = BA * BB * c->m * c->n;
  double *av = malloc(sizeof(double) * (size_t)na), *bv = malloc(sizeof(double) * (size_t)nb);
  double *want = calloc((size_t)nout, sizeof(double)), *terms = calloc((size_t)nout, sizeof(double));
  double *g = malloc(sizeof(double) * (size_t)nout);
  double *da = calloc((size_t)na, sizeof(double)), *ta = calloc((size_t)na, sizeof(double));
  double *db = calloc((size_t)nb, sizeof(double)), *tb = calloc((size_t)nb, sizeof(double));
  double *got = NULL, *gota = NULL, *gotb = NULL;
  zmlx_array *a = NULL, *b = NULL, *y = NULL, *ag = NULL, *vout = NULL, *grad[2] = {0};
  zmlx_status st = ZMLX_OK;
  if (!av || !bv || !want || !terms || !g || !da || !ta || !db || !tb) {
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    goto done;
  }
  for (int64_t i = 0; i < na; i++) av[i] = zck_round(dt, zck_uniform(rng, -1, 1));
  for (int64_t i = 0; i < nb; i++) bv[i] = zck_round(dt, zck_uniform(rng, -1, 1));
  for (int64_t i = 0; i < nout; i++) g[i] = zck_round(dt, zck_uniform(rng, -1, 1));
  /* out[x, y, i, j] = sum_k a[x, i, k] b[y, k, j]; the gradients too */
  for (int64_t x = 0; x < BA; x++)
    for (int64_t yb = 0; yb < BB; yb++)
      for (int64_t i = 0; i < c->m; i++)
        for (int64_t j = 0; j < c->n; j++) {
          const int64_t oi = ((x * BB + yb) * c->m + i) * c->n + j;
          double s = 0, t = 0;
          for (int64_t kk = 0; kk < c->k; kk++) {
            const double p = av[(x * c->m + i) * c->k + kk], q = bv[(yb * c->k + kk) * c->n + j];
            s += p * q;
            t += fabs(p * q);
            if (grads) {
              da[(x * c->m + i) * c->k + kk] += g[oi] * q;
              ta[(x * c->m + i) * c->k + kk] += fabs(g[oi] * q);
              db[(yb * c->k + kk) * c->n + j] += p * g[oi];
              tb[(yb * c->k + kk) * c->n + j] += fabs(p * g[oi]);
            }
          }
          want[oi] = s;
          terms[oi] = t;
        }
  st = operand(o->device, dt, and_, as, c->trans_a, av, &a);
  if (st == ZMLX_OK) st = operand(o->device, dt, bnd, bs, c->trans_b, bv, &b);
  if (st != ZMLX_OK) goto done;
  long before = zmlxi_ad_gemm_library_runs;
  zck_poison_pool(o->device, dt, 1, &nout);
  st = zmlx_matmul(a, b, &y);
  if (st == ZMLX_OK) st = zck_download(y, &got);
  if (st != ZMLX_OK) goto done;
  {
    double e, t;
    int ok = zck_within_scaled(got, want, terms, nout, zck_bound_sum(ZCK_TOL_ELEMENTWISE, dt, c->k),
                               &e, &t);
    zck_emit(o, "matmul", "fwd", dt, name, e, t, ok);
    /* products of a dtype the device's library takes go to it, unless
     * their batch axes do not collapse into one stride (a [B, 1] operand
     * against a [B'] one) or there is nothing to sum (K = 0) */
    int want_lib = zmlxi_device_gemm_takes(o->device, dt) && c->k > 0 && !(c->ba && c->bb);
    int ran_lib = zmlxi_ad_gemm_library_runs != before;
    zck_emit(o, "matmul", want_lib ? "path: library GEMM" : "path: dialect GEMM", dt, name,
             ran_lib != want_lib, 0, ran_lib == want_lib);
  }
  if (!grads) goto done;
  int64_t osh[4] = {BA, BB, c->m, c->n};
  const int ond = c->ba ? 4 : c->bb ? 3 : 2;
  st = zck_upload(o->device, dt, ond, osh + (4 - ond), g, &ag);
  if (st == ZMLX_OK) {
    zmlx_array *ins[2] = {a, b};
    int argn[2] = {0, 1};
    st = zmlx_vjp(mm_fn, NULL, ins, 2, argn, 2, ag, &vout, grad);
  }
  if (st == ZMLX_OK) st = zck_download(grad[0], &gota);
  if (st == ZMLX_OK) st = zck_download(grad[1], &gotb);
  if (st != ZMLX_OK) goto done;
  {
    /* a broadcast operand's gradient sums over the other batch too */
    double e, t;
    zck_bound bd = zck_bound_sum(ZCK_TOL_ELEMENTWISE, dt, (c->m > c->n ? c->m : c->n) * BA * BB);
    bd.atol += zck_unit_roundoff(dt); /* 16-bit partial sums are kept in f32, then rounded */
    zck_within_scaled(gota, da, ta, na, bd, &e, &t);
    int ok = zck_within_acc(gotb, db, tb, nb, bd, &e, &t);
    zck_emit(o, "matmul", "vjp a, b", dt, name, e, t, ok);
  }
done:
  if (st != ZMLX_OK) zck_emit_fail(o, "matmul", grads ? "fwd + vjp" : "fwd", dt, name, st);
  free(av); free(bv); free(want); free(terms); free(g); free(da); free(ta); free(db); free(tb);
  free(got); free(gota); free(gotb);
  zmlx_array_release(a); zmlx_array_release(b); zmlx_array_release(y); zmlx_array_release(ag);
  zmlx_array_release(vout); zmlx_array_release(grad[0]); zmlx_array_release(grad[1]);
  zmlx_clear_error();
}

static void mm_bad(const zmlx_check_opts *o) {
  zmlx_array *a = NULL, *b = NULL, *c = NULL, *y = NULL;
  int64_t sa[2] = {3, 4}, sb[2] = {5, 6}, sc[3] = {2, 4, 6}, sd[3] = {3, 3, 4};
  zmlx_status st = zmlx_array_zeros(o->device, o->dtype, 2, sa, &a);
  if (st == ZMLX_OK) st = zmlx_array_zeros(o->device, o->dtype, 2, sb, &b);
  if (st == ZMLX_OK) st = zmlx_array_zeros(o->device, o->dtype, 3, sc, &c);
  if (st != ZMLX_OK) {
    zck_emit_fail(o, "matmul", "bad input", o->dtype, "setup", st);
  } else {
    zck_expect(o, "matmul", "K differs", zmlx_matmul(a, b, &y), y, ZMLX_ERR_SHAPE, "[5, 6]");
    y = NULL;
    zmlx_array *d = NULL;
    st = zmlx_array_zeros(o->device, o->dtype, 3, sd, &d);
    if (st == ZMLX_OK) {
      zck_expect(o, "matmul", "batch does not broadcast", zmlx_matmul(d, c, &y), y, ZMLX_ERR_SHAPE,
                 "[2, 4, 6]");
      y = NULL;
    }
    zmlx_array_release(d);
    zck_expect(o, "matmul", "NULL b", zmlx_matmul(a, NULL, &y), y, ZMLX_ERR_NULL_ARG, NULL);
  }
  zmlx_array_release(a);
  zmlx_array_release(b);
  zmlx_array_release(c);
  zmlx_clear_error();
}

static zmlx_status check_matmul(const zmlx_check_opts *o) {
  uint64_t rng = o->seed * 2654435761u + 4099u;
  static const mm_case quick[] = {
      {1, 1, 1, 0, 0, 0, 0},    {1, 7, 33, 0, 0, 0, 0},    {7, 33, 1, 0, 0, 0, 0},
      {33, 7, 5, 1, 0, 0, 0},   {5, 33, 7, 0, 1, 0, 0},    {17, 9, 13, 1, 1, 0, 0},
      {3, 4097, 2, 0, 0, 0, 0}, {7, 5, 3, 0, 0, 0, 3},     {4, 6, 5, 0, 1, 2, 3},
      {6, 0, 4, 0, 0, 0, 0},
  };
  static const mm_case full[] = {
      {1000, 33, 7, 0, 0, 0, 0}, {7, 1000, 33, 1, 0, 0, 0}, {33, 7, 1000, 0, 1, 0, 0},
      {64, 4097, 16, 0, 0, 0, 0}, {256, 256, 256, 1, 1, 0, 4},
  };
  for (size_t i = 0; i < sizeof quick / sizeof quick[0]; i++)
    mm_case_run(o, &quick[i], quick[i].k > 0 && quick[i].k < 4097, &rng);
  if (!o->quick)
    for (size_t i = 0; i < sizeof full / sizeof full[0]; i++) mm_case_run(o, &full[i], 1, &rng);
  mm_bad(o);
  return ZMLX_OK;
}

const zmlx_catalog_op zck_catalog_matmul_ops[] = {
    {"matmul", check_matmul},
    {0},
};

/* ---------------------------------------------------------------- benchmarks */

typedef struct mm_bench {
  zmlx_array *a, *b;
} mm_bench;

static zmlx_status mm_bench_run(void *p) {
  mm_bench *c = p;
  zmlx_array *y = NULL;
  zmlx_status st = zmlx_matmul(c->a, c->b, &y);
  zmlx_array_release(y);
  return st;
}

/* n^3 products for n = 4096 and 8192 in bf16 and f32 (the sizes;
 * n = 512 on a CPU device). FLOPs 2 n^3. */
static zmlx_status bench_matmul(const zmlx_bench_opts *o) {
  zmlx_device_info info;
  ZMLX_CHECK(zmlx_device_get_info(o->device, &info));
  static const int64_t gpu_n[] = {4096, 8192}, cpu_n[] = {512};
  const int64_t *ns = info.is_cpu ? cpu_n : gpu_n;
  const int count = info.is_cpu ? 1 : 2;
  static const zmlx_dtype dts[] = {ZMLX_BF16, ZMLX_F32};
  zmlx_status st = ZMLX_OK;
  for (int i = 0; st == ZMLX_OK && i < count; i++)
    for (int d = 0; st == ZMLX_OK && d < 2; d++) {
      int64_t shape[2] = {ns[i], ns[i]};
      mm_bench c = {0};
      st = zck_bench_random(o->device, dts[d], 2, shape, 51, &c.a);
      if (st == ZMLX_OK) st = zck_bench_random(o->device, dts[d], 2, shape, 52, &c.b);
      const double n = (double)ns[i];
      if (st == ZMLX_OK)
        st = zck_bench_time_emit_flops(o, dts[d] == ZMLX_F32 ? "matmul_f32" : "matmul", dts[d], 2, shape,
                                       3 * n * n * (double)zmlx_dtype_size(dts[d]), 2 * n * n * n,
                                       mm_bench_run, &c);
      zmlx_array_release(c.a);
      zmlx_array_release(c.b);
    }
  return st;
}

const zmlx_catalog_bench zck_catalog_matmul_bench[] = {
    {"matmul", bench_matmul},
    {0},
};
