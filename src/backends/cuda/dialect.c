/*
 * CUDA dialect: renders kernel signatures and the index prologue as CUDA
 * C++ for NVRTC. Text only — this file needs no CUDA header and is built
 * even when the CUDA backend is not, so CUDA source can be emitted (and
 * compiled by NVRTC in CI) on any machine.
 */
#include "runtime/internal.h"

extern const char zmlxi_res_prelude_cuh[];

static const char *cuda_type_name(zmlx_dtype dt) {
  switch (dt) {
    case ZMLX_BOOL: return "uchar";
    case ZMLX_U8: return "uchar";
    /* Plain `char` is unsigned on aarch64 hosts (Grace), and NVRTC follows
     * the host ABI: spell the sign out. */
    case ZMLX_I8: return "signed char";
    case ZMLX_I32: return "int";
    case ZMLX_U32: return "uint";
    case ZMLX_I64: return "zmlx_i64";
    case ZMLX_F16: return "zmlx_half";
    case ZMLX_BF16: return "zmlx_bf16";
    case ZMLX_F32: return "float";
    case ZMLX_F64: return "double";
    case ZMLX_DTYPE_COUNT: break;
  }
  return "float";
}

/* One parameter. A scalar goes by value in its storage type; an array as
 * a pointer to its element 0 (the launch adds the byte offset), then the
 * geometry the body mentions. */
static void emit_param(const zmlx_kparam *p, zmlx_sb *sb) {
  if (p->is_scalar) {
    zmlxi_sb_printf(sb, "    const %s %s,\n", cuda_type_name(p->dtype), p->name);
    return;
  }
  if (p->is_output)
    zmlxi_sb_printf(sb, "    %s* %s,\n", cuda_type_name(p->dtype), p->name);
  else
    zmlxi_sb_printf(sb, "    const %s* __restrict__ %s,\n", cuda_type_name(p->dtype), p->name);
  if (p->want_shape) zmlxi_sb_printf(sb, "    const ZMLX_GRID_CONST zmlx_kshape %s_shape_v,\n", p->name);
  if (p->want_strides)
    zmlxi_sb_printf(sb, "    const ZMLX_GRID_CONST zmlx_kstrides %s_strides_v,\n", p->name);
  if (p->want_ndim) zmlxi_sb_printf(sb, "    const int %s_ndim,\n", p->name);
}

/* <name>_shape / <name>_strides as pointers into the by-value structs. */
static void emit_geometry_locals(const zmlx_kparam *p, zmlx_sb *sb) {
  if (p->is_scalar) return;
  if (p->want_shape)
    zmlxi_sb_printf(sb, "  ZMLX_UNUSED const int* %s_shape = %s_shape_v.v;\n", p->name, p->name);
  if (p->want_strides)
    zmlxi_sb_printf(sb, "  ZMLX_UNUSED const zmlx_i64* %s_strides = %s_strides_v.v;\n", p->name,
                   p->name);
}

/* The Metal index names. Marked unused because a body uses few of them and
 * NVRTC would otherwise warn about each one in the log. */
static void emit_index_prologue(zmlx_sb *sb) {
  zmlxi_sb_append(sb,
      "  ZMLX_UNUSED const uint3 thread_position_in_threadgroup = "
      "make_uint3(threadIdx.x, threadIdx.y, threadIdx.z);\n"
      "  ZMLX_UNUSED const uint3 threadgroup_position_in_grid = "
      "make_uint3(blockIdx.x, blockIdx.y, blockIdx.z);\n"
      "  ZMLX_UNUSED const uint3 threads_per_threadgroup = "
      "make_uint3(blockDim.x, blockDim.y, blockDim.z);\n"
      "  ZMLX_UNUSED const uint3 threadgroups_per_grid = "
      "make_uint3(gridDim.x, gridDim.y, gridDim.z);\n"
      "  ZMLX_UNUSED const uint3 thread_position_in_grid = make_uint3(\n"
      "      blockIdx.x * blockDim.x + threadIdx.x,\n"
      "      blockIdx.y * blockDim.y + threadIdx.y,\n"
      "      blockIdx.z * blockDim.z + threadIdx.z);\n"
      "  ZMLX_UNUSED const uint3 grid_size = make_uint3(zmlx_grid_x, zmlx_grid_y, zmlx_grid_z);\n"
      "  ZMLX_UNUSED const uint thread_index_in_threadgroup =\n"
      "      threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);\n"
      "  ZMLX_UNUSED const uint thread_index_in_simdgroup = thread_index_in_threadgroup & 31u;\n"
      "  ZMLX_UNUSED const uint simdgroup_index_in_threadgroup = "
      "thread_index_in_threadgroup >> 5;\n"
      "  ZMLX_UNUSED const uint threads_per_simdgroup = 32u;\n"
      "  ZMLX_UNUSED const uint simdgroups_per_threadgroup =\n"
      "      (blockDim.x * blockDim.y * blockDim.z + 31u) >> 5;\n");
}

/* Threads past the requested grid leave at once. The comparison is done in
 * 64 bits: with a grid close to 2^32 the last block's global id would wrap
 * in 32-bit arithmetic and slip past the guard. */
static void emit_guard(zmlx_sb *sb) {
  zmlxi_sb_append(sb,
      "  if ((unsigned long long)blockIdx.x * blockDim.x + threadIdx.x >= zmlx_grid_x ||\n"
      "      (unsigned long long)blockIdx.y * blockDim.y + threadIdx.y >= zmlx_grid_y ||\n"
      "      (unsigned long long)blockIdx.z * blockDim.z + threadIdx.z >= zmlx_grid_z)\n"
      "    return;\n");
}

static void cuda_emit_kernel_begin(const zmlx_kspec *spec, zmlx_sb *sb) {
  zmlxi_sb_printf(sb, "extern \"C\" __global__ void %s(\n", spec->entry);
  for (int i = 0; i < spec->n_params; i++) emit_param(&spec->params[i], sb);
  zmlxi_sb_append(sb,
                 "    const unsigned int zmlx_grid_x, const unsigned int zmlx_grid_y,"
                 " const unsigned int zmlx_grid_z) {\n");
  for (int i = 0; i < spec->n_params; i++) emit_geometry_locals(&spec->params[i], sb);
  emit_index_prologue(sb);
  if (spec->guard_grid) emit_guard(sb);
}

static void cuda_emit_kernel_end(const zmlx_kspec *spec, zmlx_sb *sb) {
  (void)spec;
  zmlxi_sb_append(sb, "}\n");
}

/* C++ keywords and CUDA's predefined names and qualifiers. */
static const char *const cuda_reserved[] = {
    "alignas", "alignof", "and", "asm", "bool", "catch", "class", "const_cast", "constexpr",
    "decltype", "delete", "dynamic_cast", "explicit", "export", "false", "friend", "mutable",
    "namespace", "new", "noexcept", "not", "nullptr", "operator", "or", "private", "protected",
    "public", "reinterpret_cast", "static_assert", "static_cast", "template", "this",
    "thread_local", "throw", "true", "try", "typeid", "typename", "using", "virtual", "xor",
    "threadIdx", "blockIdx", "blockDim", "gridDim", "warpSize", "half", "nv_bfloat16",
    "__global__", "__device__", "__shared__", "__constant__", "__restrict__", NULL};

const zmlx_dialect zmlxi_dialect_cuda = {
    .kind = ZMLX_BACKEND_CUDA,
    .name = "cuda",
    .language = "CUDA C++",
    .native_simd = 1,
    .prelude = zmlxi_res_prelude_cuh,
    .type_name = cuda_type_name,
    .emit_kernel_begin = cuda_emit_kernel_begin,
    .emit_kernel_end = cuda_emit_kernel_end,
    .reserved_words = cuda_reserved,
};
