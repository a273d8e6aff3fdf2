/* The dialect kernels autograd needs beyond expression ops: a sum over any
 * axes, a strided scatter (slice gradients, concat) and the default GEMM.
 * They read inputs through <name>_shape / <name>_strides, so transposed and
 * sliced views go in without a copy. Compiled and cached like any kernel. */
#include "runtime/graph.h"
#include "autograd/ad.h"
#include "kernel/kernel.h"
#include "kernel/kernel_set.h"

#include <pthread.h>
#include <string.h>

/* One threadgroup per output element; its threads stride over the summed
 * elements and fold in threadgroup memory. The view puts the kept axes
 * first (nk of them) and the summed axes last. */
static const char SUM_BODY[] =
    "threadgroup float zsum[256];\n"
    "zmlx_i64 o = (zmlx_i64)threadgroup_position_in_grid.y * threadgroups_per_grid.x\n"
    "             + threadgroup_position_in_grid.x;\n"
    "uint tid = thread_position_in_threadgroup.x;\n"
    "uint nt = threads_per_threadgroup.x;\n"
    "float acc = 0.0f;\n"
    "if (o < n_out) {\n"
    "  zmlx_i64 rem = o, base = 0;\n"
    "  for (int d = nk - 1; d >= 0; d--) {\n"
    "    base += (rem % x_shape[d]) * x_strides[d];\n"
    "    rem /= x_shape[d];\n"
    "  }\n"
    "  for (zmlx_i64 r = tid; r < n_red; r += nt) {\n"
    "    zmlx_i64 rr = r, off = base;\n"
    "    for (int d = x_ndim - 1; d >= nk; d--) {\n"
    "      off += (rr % x_shape[d]) * x_strides[d];\n"
    "      rr /= x_shape[d];\n"
    "    }\n"
    "    acc += x_load(off);\n"
    "  }\n"
    "}\n"
    "zsum[tid] = acc;\n"
    "zmlx_barrier();\n"
    "for (uint s = nt / 2u; s > 0u; s >>= 1) {\n"
    "  if (tid < s) zsum[tid] += zsum[tid + s];\n"
    "  zmlx_barrier();\n"
    "}\n"
    "if (tid == 0u && o < n_out) out_store(o, zsum[0]);\n";

/* dst[woff + window offset of i] = src[offset of i]: `win` is a view of
 * dst's buffer that is only used for its strides (never dereferenced). */
static const char SCATTER_BODY[] =
    "zmlx_i64 i = (zmlx_i64)thread_position_in_grid.y * grid_size.x + thread_position_in_grid.x;\n"
    "if (i >= n) return;\n"
    "zmlx_i64 rem = i, so = 0, wo = 0;\n"
    "for (int d = src_ndim - 1; d >= 0; d--) {\n"
    "  zmlx_i64 c = rem % src_shape[d];\n"
    "  rem /= src_shape[d];\n"
    "  so += c * src_strides[d];\n"
    "  wo += c * win_strides[d];\n"
    "}\n"
    "dst_store(woff + wo, src_load(so));\n";

/* 16x16 tiles through threadgroup memory, f32 accumulation; grid z walks
 * the batch. A plain, correct default: cuBLAS / CLBlast plug in through
 * zmlx_set_gemm. */
static const char GEMM_BODY[] =
    "threadgroup float za[256];\n"
    "threadgroup float zb[256];\n"
    "uint tx = thread_position_in_threadgroup.x, ty = thread_position_in_threadgroup.y;\n"
    "int row = (int)(threadgroup_position_in_grid.y * 16u + ty);\n"
    "int col = (int)(threadgroup_position_in_grid.x * 16u + tx);\n"
    "zmlx_i64 z = (zmlx_i64)threadgroup_position_in_grid.z;\n"
    "int nd = a_ndim;\n"
    "zmlx_i64 ab = 0, bb = 0, rem = z;\n"
    "for (int d = nd - 3; d >= 0; d--) {\n"
    "  zmlx_i64 c = rem % a_shape[d];\n"
    "  rem /= a_shape[d];\n"
    "  ab += c * a_strides[d];\n"
    "  bb += c * b_strides[d];\n"
    "}\n"
    "zmlx_i64 sam = a_strides[nd - 2], sak = a_strides[nd - 1];\n"
    "zmlx_i64 sbk = b_strides[nd - 2], sbn = b_strides[nd - 1];\n"
    "float acc = 0.0f;\n"
    "for (int k0 = 0; k0 < K; k0 += 16) {\n"
    "  int ka = k0 + (int)tx, kb = k0 + (int)ty;\n"
    "  za[ty * 16u + tx] = (row < M && ka < K) ? (float)a_load(ab + row * sam + ka * sak) : 0.0f;\n"
    "  zb[ty * 16u + tx] = (kb < K && col < N) ? (float)b_load(bb + kb * sbk + col * sbn) : 0.0f;\n"
    "  zmlx_barrier();\n"
    "  for (int kk = 0; kk < 16; kk++) acc += za[ty * 16u + kk] * zb[kk * 16u + tx];\n"
    "  zmlx_barrier();\n"
    "}\n"
    "if (row < M && col < N) out_store(z * (zmlx_i64)M * N + (zmlx_i64)row * N + col, acc);\n";

enum { K_SUM, K_SCATTER, K_GEMM, K_COUNT };

static const zmlx_kernel_spec SPECS[K_COUNT] = {
    [K_SUM] = ZMLX_KSPEC("zmlx_ad_sum", SUM_BODY, "x", "out", "nk:i32, n_out:i64, n_red:i64"),
    [K_SCATTER] = ZMLX_KSPEC("zmlx_ad_scatter", SCATTER_BODY, "src, win", "dst", "n:i64, woff:i64"),
    [K_GEMM] = ZMLX_KSPEC("zmlx_ad_gemm", GEMM_BODY, "a, b", "out", "M:i32, N:i32, K:i32"),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("autograd", SPECS);

static zmlx_status get_kernel(int which, zmlx_kernel **out) {
  return zmlxi_kernel_set_get(&KERNELS, which, out);
}

/* ------------------------------------------------------------------- sum */

static int pow2_at_least(int64_t n, int lo, int hi) {
  int t = lo;
  while (t < hi && t < n) t *= 2;
  return t;
}

static zmlx_status launch_sum(zmlx_array *view, int nk, zmlx_array *out, int64_t n_red) {
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(get_kernel(K_SUM, &k));
  int tg = pow2_at_least(n_red, 32, 256);
  int64_t n_out = out->size, gx = n_out < 65535 ? n_out : 65535, gy = (n_out + gx - 1) / gx;
  double params[3] = {nk, (double)n_out, (double)n_red};
  zmlx_kernel_call c = {.n_inputs = 1, .n_outputs = 1, .inputs = &view, .outputs = &out,
                        .grid = {gx * tg, gy, 1}, .threadgroup = {tg, 1, 1}, .params = params,
                        .device = out->buffer->device};
  return zmlx_kernel_launch(k, &c);
}

zmlx_status zmlxi_ad_kernel_sum(zmlx_array *x, unsigned axis_mask, zmlx_array **out) {
  int perm[ZMLX_MAX_DIMS], nk = 0, np = 0;
  int64_t shape[ZMLX_MAX_DIMS], n_red = 1;
  for (int d = 0; d < x->ndim; d++) /* kept axes first, in order */
    if (!(axis_mask >> d & 1u)) {
      shape[nk++] = x->shape[d];
      perm[np++] = d;
    }
  for (int d = 0; d < x->ndim; d++) /* then the summed ones */
    if (axis_mask >> d & 1u) {
      perm[np++] = d;
      n_red *= x->shape[d];
    }
  ZMLX_CHECK(zmlxi_array_alloc(x->buffer->device, NULL, x->dtype, nk, shape, out));
  if ((*out)->size == 0) return ZMLX_OK;
  zmlx_array *view = NULL;
  zmlx_status st = zmlx_array_transpose(x, perm, &view);
  if (st == ZMLX_OK) st = launch_sum(view, nk, *out, n_red);
  zmlx_array_release(view);
  if (st != ZMLX_OK) zmlxi_ad_release_all(out, 1);
  return st;
}

/* ---------------------------------------------------------------- scatter */

zmlx_status zmlxi_ad_kernel_scatter(zmlx_array *src, zmlx_array *window, zmlx_array *dst) {
  if (src->size == 0) return ZMLX_OK;
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(get_kernel(K_SCATTER, &k));
  double params[2] = {(double)src->size, (double)(window->offset - dst->offset)};
  zmlx_array *in[2] = {src, window};
  zmlx_kernel_call c = {.n_inputs = 2, .n_outputs = 1, .inputs = in, .outputs = &dst,
                        .params = params, .device = dst->buffer->device};
  zmlxi_kernel_call_grid_1d(&c, src->size);
  return zmlx_kernel_launch(k, &c);
}

/* ------------------------------------------------------------------- gemm */

_Thread_local long zmlxi_ad_gemm_library_runs;

/* A [batch..., rows, cols] operand as a library sees it: row-major with a
 * leading dimension, or stored transposed; 0 when its strides are neither
 * (the dialect GEMM takes any strides). */
static int lib_operand(const zmlx_array *x, int *trans, int64_t *ld) {
  const int nd = x->ndim;
  const int64_t rows = x->shape[nd - 2], cols = x->shape[nd - 1];
  const int64_t sr = x->strides[nd - 2], sc = x->strides[nd - 1];
  if (cols == 1 || sc == 1) {
    *trans = 0;
    *ld = rows == 1 ? cols : sr;
    return *ld >= cols && *ld > 0;
  }
  if (rows == 1 || sr == 1) {
    *trans = 1;
    *ld = sc;
    return *ld >= rows && *ld > 0;
  }
  return 0;
}

/* The batch axes of x collapsed into one stride over `batch` entries
 * (broadcast axes have stride 0); 0 when they do not collapse. */
static int lib_batch_stride(const zmlx_array *x, int64_t *stride) {
  int64_t s = -1, expect = 0;
  for (int d = x->ndim - 3; d >= 0; d--) {
    if (x->shape[d] == 1) continue;
    if (s < 0) {
      s = x->strides[d];
      expect = s * x->shape[d];
    } else {
      if (x->strides[d] != expect && !(s == 0 && x->strides[d] == 0)) return 0;
      expect = x->strides[d] * x->shape[d];
    }
  }
  *stride = s < 0 ? 0 : s;
  return 1;
}

/* The device's library GEMM (cuBLAS, CLBlast) when it has one that takes
 * this product: ZMLX_OK when it ran, ZMLX_ERR_UNSUPPORTED when the dialect
 * GEMM should (error cleared), anything else a real failure. */
static zmlx_status library_gemm(zmlx_array *a, zmlx_array *b, zmlx_array *out) {
  zmlx_device *dev = out->buffer->device;
  if (!zmlxi_device_gemm_takes(dev, out->dtype) || a->dtype != out->dtype || b->dtype != out->dtype)
    return ZMLX_ERR_UNSUPPORTED;
  const int nd = a->ndim;
  zmlx_gemm_args g = {.dtype = out->dtype, .c_dtype = out->dtype,
                      .m = a->shape[nd - 2], .n = b->shape[nd - 1], .k = a->shape[nd - 1],
                      .a = a->buffer->handle, .b = b->buffer->handle, .c = out->buffer->handle,
                      .a_off = a->offset, .b_off = b->offset, .c_off = out->offset,
                      .ldc = out->shape[nd - 1]};
  g.batch = out->size / (g.m * g.n);
  g.c_batch = g.m * g.n;
  if (!lib_operand(a, &g.trans_a, &g.lda) || !lib_operand(b, &g.trans_b, &g.ldb) ||
      !lib_batch_stride(a, &g.a_batch) || !lib_batch_stride(b, &g.b_batch) || g.k == 0)
    return ZMLX_ERR_UNSUPPORTED;
  if (g.m > INT32_MAX || g.n > INT32_MAX || g.k > INT32_MAX || g.batch > INT32_MAX)
    return ZMLX_ERR_UNSUPPORTED;
  /* 16-bit products are rounded once: where the library cannot promise it
   * (a split-K summing its partials in the 16-bit output: cuBLAS bf16 at
   * K = 4097 was off by 2.4x the bound of one rounding), they land in f32
   * first */
  zmlx_array *c32 = NULL;
  void *stream = zmlxi_stream_or_default(NULL, dev)->handle;
  const int once = dev->ops->gemm_rounds_once && dev->ops->gemm_rounds_once(dev->index);
  if (out->dtype != ZMLX_F32 && !once) {
    ZMLX_CHECK(zmlxi_array_alloc(dev, NULL, ZMLX_F32, out->ndim, out->shape, &c32));
    g.c = c32->buffer->handle;
    g.c_off = c32->offset;
    g.c_dtype = ZMLX_F32;
  }
  zmlx_graph *capture = zmlxi_capture_on(dev);
  zmlx_status st = ZMLX_OK;
  if (capture) { /* the product's buffers stay where the graph saw them */
    zmlx_buffer *used[4] = {a->buffer, b->buffer, out->buffer, c32 ? c32->buffer : out->buffer};
    for (int i = 0; i < 4 && st == ZMLX_OK; i++) st = zmlxi_capture_hold(capture, used[i]);
  }
  if (st == ZMLX_OK) st = zmlxi_gemm(dev, stream, &g);
  if (st == ZMLX_OK && c32) {
    zmlx_array *cast = NULL;
    st = zmlx_array_astype(c32, out->dtype, &cast);
    if (st == ZMLX_OK)
      st = zmlxi_copy(dev, stream, out->buffer, (size_t)out->offset * zmlx_dtype_size(out->dtype),
                      cast->buffer, (size_t)cast->offset * zmlx_dtype_size(out->dtype),
                      zmlx_array_nbytes(out));
    zmlx_array_release(cast);
  }
  zmlx_array_release(c32);
  if (st == ZMLX_ERR_UNSUPPORTED) zmlx_clear_error();
  if (st == ZMLX_OK) zmlxi_ad_gemm_library_runs++;
  return st;
}

zmlx_status zmlxi_ad_kernel_gemm(void *ctx, zmlx_array *a, zmlx_array *b, zmlx_array *out) {
  (void)ctx;
  if (out->size == 0) return ZMLX_OK;
  zmlx_status lib = library_gemm(a, b, out);
  if (lib != ZMLX_ERR_UNSUPPORTED) return lib;
  int nd = a->ndim;
  int64_t m = a->shape[nd - 2], kk = a->shape[nd - 1], n = b->shape[nd - 1];
  int64_t batch = out->size / (m * n > 0 ? m * n : 1);
  if (out->size == 0) return ZMLX_OK;
  if (m > INT32_MAX || n > INT32_MAX || kk > INT32_MAX || batch > 65535 || (m + 15) / 16 > 65535)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "matmul: the built-in GEMM takes M, N, K < 2^31, "
                     "M < 2^20 and at most 65535 batch entries (plug in a library GEMM with "
                     "zmlx_set_gemm for more)");
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(get_kernel(K_GEMM, &k));
  double params[3] = {(double)m, (double)n, (double)kk};
  zmlx_array *in[2] = {a, b};
  zmlx_kernel_call c = {.n_inputs = 2, .n_outputs = 1, .inputs = in, .outputs = &out,
                        .grid = {(n + 15) / 16 * 16, (m + 15) / 16 * 16, batch},
                        .threadgroup = {16, 16, 1}, .params = params,
                        .device = out->buffer->device};
  return zmlx_kernel_launch(k, &c);
}
