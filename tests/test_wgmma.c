/* Hopper's warpgroup products as the CUDA dialect exposes them (prelude.cuh,
 * docs/DIALECT.md "Warpgroup matrix units"): one threadgroup stages A (64 x
 * 128), B (N x 128) and V (128 x N) in 128-byte-swizzled threadgroup tiles and
 * computes A B^T with both operands from memory (_ss) and A V with A from
 * registers and V read N-major (_rs_t), N 64 and 128, f16 and bf16, against a
 * double reference of the rounded inputs. The attention forward builds on
 * exactly these (attention_tile.zk's ZT_WG): a wrong descriptor here shows
 * which product is wrong. The source is compiled by NVRTC for sm_90a where
 * the toolkit is (CI); it runs only on a device with has_wgmma. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_support.h"

#ifdef ZMLX_HAVE_CUDA
#include "backends/cuda/nvrtc.h"
#endif

enum { WM = 64, WK = 128 };

/* Rows `rows` x 8 `chunks` of src into the swizzled tile dst: 16-byte chunk
 * ch of row r at 64-column block ch / 8, row r, chunk (ch % 8) ^ (r % 8). */
static const char *const kSource =
    "#define ZW_TILE(dst, src, rows, chunks)                                    \\\n"
    "  for (int c_ = (int)tid; c_ < (rows) * (chunks); c_ += 128) {             \\\n"
    "    const int r_ = c_ / (chunks), ch_ = c_ % (chunks);                     \\\n"
    "    ((threadgroup uint4 *)(dst))[((ch_ >> 3) * (rows) * 64 + r_ * 64 +      \\\n"
    "        (((ch_ & 7) ^ (r_ & 7)) << 3)) / 8] = ((const device uint4 *)(src))[c_]; \\\n"
    "  }\n"
    "#if BF16 && N == 128\n"
    "#define ZW_SS zmlx_wgmma_m64n128k16_bf16_ss\n"
    "#define ZW_RS zmlx_wgmma_m64n128k16_bf16_rs_t\n"
    "#elif BF16\n"
    "#define ZW_SS zmlx_wgmma_m64n64k16_bf16_ss\n"
    "#define ZW_RS zmlx_wgmma_m64n64k16_bf16_rs_t\n"
    "#elif N == 128\n"
    "#define ZW_SS zmlx_wgmma_m64n128k16_f16_ss\n"
    "#define ZW_RS zmlx_wgmma_m64n128k16_f16_rs_t\n"
    "#else\n"
    "#define ZW_SS zmlx_wgmma_m64n64k16_f16_ss\n"
    "#define ZW_RS zmlx_wgmma_m64n64k16_f16_rs_t\n"
    "#endif\n"
    "const uint tid = thread_index_in_threadgroup;\n"
    "const int lane = (int)(tid % 32u), warp = (int)(tid / 32u), g = lane >> 2, tq = lane & 3;\n"
    "zmlx_threadgroup_ptr(T) As = zmlx_wgmma_align(T, zmlx_dynamic_shared(T));\n"
    "zmlx_threadgroup_ptr(T) Bs = As + 64 * 128;\n"
    "zmlx_threadgroup_ptr(T) Vs = Bs + N * 128;\n"
    "ZW_TILE(As, a, 64, 16)\n"
    "ZW_TILE(Bs, b, N, 16)\n"
    "ZW_TILE(Vs, v, 128, N / 8)\n"
    "zmlx_fence_async_shared();\n"
    "zmlx_barrier();\n"
    "float d[N / 2], e[N / 2];\n"
    "for (int i = 0; i < N / 2; i++) { d[i] = 0.0f; e[i] = 0.0f; }\n"
    "uint f[8][4]; /* A's fragments from device memory: rows g, g + 8 of warp's 16 */\n"
    "const device uint *a2 = (const device uint *)a;\n"
    "for (int kk = 0; kk < 8; kk++) {\n"
    "  const int r0 = 16 * warp + g, c0 = 16 * kk + 2 * tq;\n"
    "  f[kk][0] = a2[(r0 * 128 + c0) / 2];\n"
    "  f[kk][1] = a2[((r0 + 8) * 128 + c0) / 2];\n"
    "  f[kk][2] = a2[(r0 * 128 + c0 + 8) / 2];\n"
    "  f[kk][3] = a2[((r0 + 8) * 128 + c0 + 8) / 2];\n"
    "}\n"
    "zmlx_wgmma_fence();\n"
    "for (int kk = 0; kk < 8; kk++)\n"
    "  ZW_SS(d, zmlx_wgmma_desc(As + (kk >> 2) * 64 * 64 + (kk & 3) * 16, 16, 1024),\n"
    "        zmlx_wgmma_desc(Bs + (kk >> 2) * N * 64 + (kk & 3) * 16, 16, 1024), 1);\n"
    "for (int kk = 0; kk < 8; kk++)\n"
    "  ZW_RS(e, f[kk], zmlx_wgmma_desc(Vs + kk * 16 * 64, 128 * 128, 1024));\n"
    "zmlx_wgmma_commit();\n"
    "zmlx_wgmma_wait();\n"
    "for (int i = 0; i < N / 2; i++) { zmlx_wgmma_hold(d[i]); zmlx_wgmma_hold(e[i]); }\n"
    "for (int kk = 0; kk < 8; kk++)\n"
    "  for (int i = 0; i < 4; i++) zmlx_wgmma_hold_u(f[kk][i]);\n"
    "for (int i = 0; i < N / 2; i++) {\n"
    "  const int row = 16 * warp + g + 8 * ((i & 3) >> 1), col = 8 * (i >> 2) + 2 * tq + (i & 1);\n"
    "  ab_store(row * N + col, d[i]);\n"
    "  av_store(row * N + col, e[i]);\n"
    "}\n";

static zmlx_kernel *make_kernel(void) {
  static const char *const in[] = {"a", "b", "v"}, *const out[] = {"ab", "av"};
  zmlx_kernel_desc d = {.name = "zmlx_test_wgmma", .input_names = in, .n_inputs = 3,
                        .output_names = out, .n_outputs = 2, .source = kSource};
  zmlx_kernel *k = NULL;
  ZT_OK(zmlx_kernel_create(&d, &k));
  return k;
}

static void fill_templates(zmlx_template_arg *t, zmlx_dtype dt, int n) {
  t[0] = (zmlx_template_arg){"T", ZMLX_TEMPLATE_DTYPE, dt, 0};
  t[1] = (zmlx_template_arg){"N", ZMLX_TEMPLATE_INT, ZMLX_F32, n};
  t[2] = (zmlx_template_arg){"BF16", ZMLX_TEMPLATE_BOOL, ZMLX_F32, dt == ZMLX_BF16};
}

static void test_compiles_for_sm90a(void **state) {
  (void)state;
#ifndef ZMLX_HAVE_CUDA
  skip();
#else
  if (!zmlxi_nvrtc_available()) skip();
  zmlx_kernel *k = make_kernel();
  zmlx_dtype dts[2] = {ZMLX_F16, ZMLX_BF16}, io[5];
  for (int di = 0; di < 2; di++)
    for (int n = 64; n <= 128; n += 64) {
      zmlx_template_arg t[3];
      fill_templates(t, dts[di], n);
      io[0] = io[1] = io[2] = dts[di];
      io[3] = io[4] = ZMLX_F32;
      zmlx_kernel_call c = {.n_inputs = 3, .n_outputs = 2, .output_dtypes = io + 3,
                            .templates = t, .n_templates = 3};
      char *src = NULL;
      ZT_OK(zmlx_kernel_source(k, ZMLX_BACKEND_CUDA, &c, io, &src));
      void *cubin = NULL;
      size_t size = 0;
      char *log = NULL;
      if (zmlxi_nvrtc_compile(src, "wgmma", "sm_90a", &cubin, &size, &log) != ZMLX_OK)
        fail_msg("NVRTC sm_90a (%s, N %d): %s", zmlx_dtype_name(dts[di]), n, zmlx_last_error());
      free(cubin);
      free(log);
      zmlx_free(src);
    }
  zmlx_kernel_destroy(k);
#endif
}

/* max |got - want| / (1 + |want|) over rows x cols */
static double worst(const double *got, const double *want, size_t n) {
  double w = 0;
  for (size_t i = 0; i < n; i++) {
    const double e = fabs(got[i] - want[i]) / (1.0 + fabs(want[i]));
    if (!(e <= w)) w = e; /* NaN counts as the worst */
  }
  return w;
}

static void check_products(zmlx_device *dev, zmlx_dtype dt, int n) {
  uint64_t st = zt_seed() ^ (uint64_t)(n * 131 + (int)dt);
  float *a = malloc(sizeof(float) * WM * WK), *b = malloc(sizeof(float) * (size_t)n * WK),
        *v = malloc(sizeof(float) * WK * (size_t)n);
  assert_true(a && b && v);
  zt_fill_uniform(a, WM * WK, -1, 1, &st);
  zt_fill_uniform(b, (size_t)n * WK, -1, 1, &st);
  zt_fill_uniform(v, (size_t)WK * n, -1, 1, &st);
  int64_t sa[2] = {WM, WK}, sb[2] = {n, WK}, sv[2] = {WK, n}, so[2] = {WM, n};
  zmlx_array *in[3] = {zt_array(dev, dt, 2, sa, a), zt_array(dev, dt, 2, sb, b),
                       zt_array(dev, dt, 2, sv, v)};
  zmlx_array *out[2] = {zt_poisoned(dev, ZMLX_F32, 2, so), zt_poisoned(dev, ZMLX_F32, 2, so)};
  zmlx_kernel *k = make_kernel();
  zmlx_template_arg t[3];
  fill_templates(t, dt, n);
  zmlx_kernel_call c = {.n_inputs = 3, .n_outputs = 2, .inputs = in, .outputs = out,
                        .grid = {128, 1, 1}, .threadgroup = {128, 1, 1}, .templates = t,
                        .n_templates = 3,
                        .dynamic_shared_bytes = 2 * (size_t)(WM + n + WK) * WK + 1024};
  ZT_OK(zmlx_kernel_launch(k, &c));
  double *ab = zt_download(out[0]), *av = zt_download(out[1]);
  double *want_ab = calloc((size_t)WM * n, sizeof(double)),
         *want_av = calloc((size_t)WM * n, sizeof(double));
  assert_true(want_ab && want_av);
  for (int i = 0; i < WM; i++)
    for (int j = 0; j < n; j++)
      for (int kk = 0; kk < WK; kk++) {
        const double x = zt_round_to(dt, a[i * WK + kk]);
        want_ab[i * n + j] += x * zt_round_to(dt, b[j * WK + kk]);
        want_av[i * n + j] += x * zt_round_to(dt, v[kk * n + j]);
      }
  const double e_ab = worst(ab, want_ab, (size_t)WM * n), e_av = worst(av, want_av, (size_t)WM * n);
  fprintf(stderr, "wgmma %s N %d: A B^T (both from memory) error %.2e, A V (A from registers, V "
          "N-major) error %.2e\n", zmlx_dtype_name(dt), n, e_ab, e_av);
  /* f32 accumulation of 128 products of 16-bit inputs */
  if (!(e_ab < 1e-4) || !(e_av < 1e-4))
    fail_msg("wgmma %s N %d: error A B^T %.2e, A V %.2e", zmlx_dtype_name(dt), n, e_ab, e_av);
  free(ab), free(av), free(want_ab), free(want_av), free(a), free(b), free(v);
  zmlx_array_release(in[0]), zmlx_array_release(in[1]), zmlx_array_release(in[2]);
  zmlx_array_release(out[0]), zmlx_array_release(out[1]);
  zmlx_kernel_destroy(k);
}

static void test_products_on_device(void **state) {
  (void)state;
  zmlx_device *devs[4];
  int nd = zt_devices(devs, 4), ran = 0;
  for (int d = 0; d < nd; d++) {
    zmlx_device_info info;
    ZT_OK(zmlx_device_get_info(devs[d], &info));
    if (!info.has_wgmma) continue;
    for (int n = 64; n <= 128; n += 64) {
      check_products(devs[d], ZMLX_F16, n);
      check_products(devs[d], ZMLX_BF16, n);
    }
    ran++;
  }
  if (!ran) skip(); /* no Hopper GPU here */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_compiles_for_sm90a),
      cmocka_unit_test(test_products_on_device),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
