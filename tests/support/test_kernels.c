#include "test_kernels.h"

#include <stddef.h>

static const char *const in_x[] = {"x"};
static const char *const in_xy[] = {"x", "y"};
static const char *const out_o[] = {"out"};
static const char *const out_two[] = {"sum", "count"};
static const char *const out_sum_max[] = {"sum", "mx"};

static const char *const params_ab[] = {"alpha", "shift"};
static const zmlx_dtype params_ab_dt[] = {ZMLX_F32, ZMLX_I32};

#define DESC(n, ins, nin, outs, nout, body) \
  .desc = {.name = n, .input_names = ins, .n_inputs = nin, .output_names = outs, \
           .n_outputs = nout, .source = body}

const zt_kernel_def zt_kernels[ZT_K_COUNT] = {
    [ZT_K_AXPB] = {DESC("axpb", in_xy, 2, out_o, 1,
                        "uint i = thread_position_in_grid.x;\n"
                        "out_store(i, x_load(i) * y_load(i) + 1.0f);\n"),
                   .dtypes = {ZMLX_F32, ZMLX_F32, ZMLX_F32}},
    [ZT_K_SOFTMAX] = {DESC("row_softmax", in_x, 1, out_o, 1,
                           "threadgroup float red[1024];\n"
                           "uint row = threadgroup_position_in_grid.x;\n"
                           "uint tid = thread_position_in_threadgroup.x;\n"
                           "uint nt = threads_per_threadgroup.x;\n"
                           "int D = x_shape[x_ndim - 1];\n"
                           "zmlx_i64 base = (zmlx_i64)row * D;\n"
                           "float m = -ZMLX_INF;\n"
                           "for (int j = (int)tid; j < D; j += (int)nt) m = fmax(m, x_load(base + j));\n"
                           "red[tid] = m;\n"
                           "zmlx_barrier();\n"
                           "for (uint s = nt / 2; s > 0; s >>= 1) {\n"
                           "  if (tid < s) red[tid] = fmax(red[tid], red[tid + s]);\n"
                           "  zmlx_barrier();\n"
                           "}\n"
                           "m = red[0];\n"
                           "zmlx_barrier();\n"
                           "float acc = 0.0f;\n"
                           "for (int j = (int)tid; j < D; j += (int)nt) acc += exp(x_load(base + j) - m);\n"
                           "red[tid] = acc;\n"
                           "zmlx_barrier();\n"
                           "for (uint s = nt / 2; s > 0; s >>= 1) {\n"
                           "  if (tid < s) red[tid] += red[tid + s];\n"
                           "  zmlx_barrier();\n"
                           "}\n"
                           "float inv = 1.0f / red[0];\n"
                           "for (int j = (int)tid; j < D; j += (int)nt)\n"
                           "  out_store(base + j, exp(x_load(base + j) - m) * inv);\n"),
                      .dtypes = {ZMLX_F16, ZMLX_F16}},
    [ZT_K_SIMD_SUM] = {DESC("simd_sum_max", in_x, 1, out_sum_max, 2,
                            "threadgroup float part_s[32];\n"
                            "threadgroup float part_m[32];\n"
                            "uint gid = thread_position_in_grid.x;\n"
                            "float v = gid < (uint)N ? x_load(gid) : 0.0f;\n"
                            "float vm = gid < (uint)N ? x_load(gid) : -ZMLX_INF;\n"
                            "float s = zmlx_simd_sum(v);\n"
                            "float m = zmlx_simd_max(vm);\n"
                            "if (thread_index_in_simdgroup == 0) {\n"
                            "  part_s[simdgroup_index_in_threadgroup] = s;\n"
                            "  part_m[simdgroup_index_in_threadgroup] = m;\n"
                            "}\n"
                            "zmlx_barrier();\n"
                            "if (thread_index_in_threadgroup == 0) {\n"
                            "  float t = 0.0f, tm = -ZMLX_INF;\n"
                            "  for (uint w = 0; w < simdgroups_per_threadgroup; w++) {\n"
                            "    t += part_s[w];\n"
                            "    tm = fmax(tm, part_m[w]);\n"
                            "  }\n"
                            "  sum_store(threadgroup_position_in_grid.x, t);\n"
                            "  mx_store(threadgroup_position_in_grid.x, tm);\n"
                            "}\n"),
                       .dtypes = {ZMLX_F32, ZMLX_F32, ZMLX_F32},
                       .templates = {{.name = "N", .kind = ZMLX_TEMPLATE_INT, .value = 1000}},
                       .n_templates = 1},
    [ZT_K_MIXED16] = {DESC("mixed16", in_xy, 2, out_o, 1,
                           "uint i = thread_position_in_grid.x;\n"
                           "out_store(i, x_load(i) * 2.0f + y_load(i));\n"),
                      .dtypes = {ZMLX_F16, ZMLX_BF16, ZMLX_BF16}},
    [ZT_K_ATOMIC] = {.desc = {.name = "atomic_bins", .input_names = in_x, .n_inputs = 1,
                              .output_names = out_two, .n_outputs = 2, .atomic_outputs = 1,
                              .source = "uint i = thread_position_in_grid.x;\n"
                                        "uint bin = i % 4u;\n"
                                        "zmlx_atomic_add_f32(sum, bin, x_load(i));\n"
                                        "zmlx_atomic_add_i32(count, bin, 1);\n"},
                     .dtypes = {ZMLX_F32, ZMLX_F32, ZMLX_I32}},
    [ZT_K_TEMPLATE] = {DESC("templated", in_x, 1, out_o, 1,
                            "uint i = thread_position_in_grid.x;\n"
                            "T_compute v = (T_compute)x_load(i);\n"
                            "if (SCALE_ON) v = v * (T_compute)SCALE;\n"
                            "out_store(i, v);\n"),
                       .dtypes = {ZMLX_F32, ZMLX_F16},
                       .templates = {{.name = "T", .kind = ZMLX_TEMPLATE_DTYPE, .dtype = ZMLX_F16},
                                     {.name = "SCALE", .kind = ZMLX_TEMPLATE_INT, .value = 3},
                                     {.name = "SCALE_ON", .kind = ZMLX_TEMPLATE_BOOL, .value = 1}},
                       .n_templates = 3},
    [ZT_K_STRIDED] = {DESC("strided_read", in_x, 1, out_o, 1,
                           "uint i = thread_position_in_grid.x;\n"
                           "zmlx_i64 rem = i, off = 0;\n"
                           "for (int d = x_ndim - 1; d >= 0; d--) {\n"
                           "  off += (rem % x_shape[d]) * x_strides[d];\n"
                           "  rem /= x_shape[d];\n"
                           "}\n"
                           "out_store(i, x_load(off));\n"),
                      .dtypes = {ZMLX_F32, ZMLX_F32}},
    [ZT_K_DENSE2X] = {.desc = {.name = "dense_twice", .input_names = in_x, .n_inputs = 1,
                               .output_names = out_o, .n_outputs = 1, .ensure_row_contiguous = 1,
                               .source = "uint i = thread_position_in_grid.x;\n"
                                         "out_store(i, 2.0f * x_load(i));\n"},
                      .dtypes = {ZMLX_F32, ZMLX_F32}},
    [ZT_K_PARAMS] = {.desc = {.name = "scaled_shift", .input_names = in_x, .n_inputs = 1,
                              .output_names = out_o, .n_outputs = 1, .param_names = params_ab,
                              .param_dtypes = params_ab_dt, .n_params = 2,
                              .source = "uint i = thread_position_in_grid.x;\n"
                                        "out_store(i, alpha * x_load(i) + (float)shift);\n"},
                     .dtypes = {ZMLX_F32, ZMLX_F32}},
    [ZT_K_DYNSHARED] = {DESC("reverse_tg", in_x, 1, out_o, 1,
                             "zmlx_threadgroup_ptr(float) buf = zmlx_dynamic_shared(float);\n"
                             "uint t = thread_position_in_threadgroup.x;\n"
                             "uint n = threads_per_threadgroup.x;\n"
                             "uint g = thread_position_in_grid.x;\n"
                             "buf[t] = x_load(g);\n"
                             "zmlx_barrier();\n"
                             "out_store(g, buf[n - 1 - t]);\n"),
                        .dtypes = {ZMLX_F32, ZMLX_F32}},
    [ZT_K_EVEN_ONLY] = {DESC("even_only", in_x, 1, out_o, 1,
                             "uint i = thread_position_in_grid.x;\n"
                             "if ((i & 1u) == 0u) out_store(i, x_load(i) + 10.0f);\n"),
                        .dtypes = {ZMLX_F32, ZMLX_F32}},
    [ZT_K_SIMD_CHAIN] = {DESC("simd_chain", in_x, 1, out_o, 1,
                              "uint gid = thread_position_in_grid.x;\n"
                              "float v = x_load(gid);\n"
                              "float m = zmlx_simd_max(v);\n"
                              "float s = zmlx_simd_sum(v - m);\n"
                              "float m2 = zmlx_simd_max(s);\n"
                              "out_store(gid, m2 + m);\n"),
                         .dtypes = {ZMLX_F32, ZMLX_F32}},
    [ZT_K_SHUFFLE] = {DESC("lane_exchange", in_x, 1, out_o, 1,
                           "uint gid = thread_position_in_grid.x;\n"
                           "uint bits = zmlx_as_uint(x_load(gid));\n"
                           "float partner = zmlx_as_float(zmlx_simd_shuffle_xor(bits, 5u));\n"
                           "float third = zmlx_as_float(zmlx_simd_broadcast(bits, 3u));\n"
                           "int tz = 0;\n"
                           "ZMLX_UNROLL for (int r = 0; r < 2; r++) tz += zmlx_ctz(gid + 1u);\n"
                           "out_store(gid, partner + 100.0f * third + (float)tz);\n"),
                      .dtypes = {ZMLX_F32, ZMLX_F32}},
};
