/*
 * OpenCL dialect: renders the kernel signature and index prologue for the
 * portable kernel dialect (docs/DIALECT.md). Pure text generation, so it is
 * built even when the OpenCL backend is not (no OpenCL headers here).
 *
 * Signature shape, for each param `x` (inputs, outputs, then scalars):
 *   __global const T* restrict x_base, ulong x_off      (input)
 *   __global T* x_base, ulong x_off                     (output)
 *   zmlx_kshape x_shape_v / zmlx_kstrides x_strides_v / int x_ndim (if used)
 *   const T x                                           (scalar, by value)
 * then `__local float4* zmlx_dyn_shared` when the body uses dynamic shared
 * memory, then the hidden grid args. Buffers travel as (cl_mem, element
 * offset) because OpenCL cannot pass a pointer into the middle of a cl_mem.
 */
#include "runtime/internal.h"

/* The prelude text, embedded by CMake from prelude.cl. */
extern const char zmlxi_res_prelude_cl[];

static const char *cl_type_name(zmlx_dtype dt) {
  switch (dt) {
    case ZMLX_BOOL: return "uchar";
    case ZMLX_U8: return "uchar";
    case ZMLX_I8: return "char";
    case ZMLX_I32: return "int";
    case ZMLX_U32: return "uint";
    case ZMLX_I64: return "zmlx_i64";
    case ZMLX_F16: return "zmlx_half";
    case ZMLX_BF16: return "zmlx_bf16";
    case ZMLX_F32: return "float";
    case ZMLX_F64: return "double";
    case ZMLX_DTYPE_COUNT: break;
  }
  return "float"; /* invalid dtype: as the CUDA and Metal dialects do */
}

/* One parameter. A scalar is passed by value in its storage type; an
 * array as the cl_mem base, its element offset, and the geometry values the
 * body mentions. */
static void emit_param(const zmlx_kparam *p, zmlx_sb *sb) {
  const char *t = cl_type_name(p->dtype);
  if (p->is_scalar) {
    zmlxi_sb_printf(sb, "    const %s %s,\n", t, p->name);
    return;
  }
  if (p->is_output)
    zmlxi_sb_printf(sb, "    __global %s* %s_base, ulong %s_off", t, p->name, p->name);
  else
    zmlxi_sb_printf(sb, "    __global const %s* restrict %s_base, ulong %s_off", t, p->name,
                   p->name);
  if (p->want_shape) zmlxi_sb_printf(sb, ",\n    zmlx_kshape %s_shape_v", p->name);
  if (p->want_strides) zmlxi_sb_printf(sb, ",\n    zmlx_kstrides %s_strides_v", p->name);
  if (p->want_ndim) zmlxi_sb_printf(sb, ",\n    int %s_ndim", p->name);
  zmlxi_sb_append(sb, ",\n");
}

/* The body sees plain pointers to element 0 and pointer-style geometry, as
 * on CUDA; the struct arguments live in private memory. */
static void emit_param_locals(const zmlx_kparam *p, zmlx_sb *sb) {
  const char *t = cl_type_name(p->dtype);
  if (p->is_scalar) return;
  if (p->is_output)
    zmlxi_sb_printf(sb, "  __global %s* %s = %s_base + %s_off;\n", t, p->name, p->name, p->name);
  else
    zmlxi_sb_printf(sb, "  __global const %s* %s = %s_base + %s_off;\n", t, p->name, p->name,
                   p->name);
  if (p->want_shape)
    zmlxi_sb_printf(sb, "  const int* %s_shape = %s_shape_v.v;\n", p->name, p->name);
  if (p->want_strides)
    zmlxi_sb_printf(sb, "  const zmlx_i64* %s_strides = %s_strides_v.v;\n", p->name, p->name);
}

/* Metal-style index names as const locals. The SIMD group is the 32-wide
 * emulated one (the prelude never uses hardware sub-groups, see prelude.cl),
 * so lanes and group ids derive from the linear local id. */
static void emit_index_names(zmlx_sb *sb) {
  zmlxi_sb_append(sb,
      "  const uint3 thread_position_in_grid = (uint3)((uint)get_global_id(0), "
      "(uint)get_global_id(1), (uint)get_global_id(2));\n"
      "  const uint3 thread_position_in_threadgroup = (uint3)((uint)get_local_id(0), "
      "(uint)get_local_id(1), (uint)get_local_id(2));\n"
      "  const uint3 threadgroup_position_in_grid = (uint3)((uint)get_group_id(0), "
      "(uint)get_group_id(1), (uint)get_group_id(2));\n"
      "  const uint3 threads_per_threadgroup = (uint3)((uint)get_local_size(0), "
      "(uint)get_local_size(1), (uint)get_local_size(2));\n"
      "  const uint3 threadgroups_per_grid = (uint3)((uint)get_num_groups(0), "
      "(uint)get_num_groups(1), (uint)get_num_groups(2));\n"
      "  const uint3 grid_size = (uint3)(zmlx_grid_x, zmlx_grid_y, zmlx_grid_z);\n"
      "  const uint thread_index_in_threadgroup = thread_position_in_threadgroup.x"
      " + thread_position_in_threadgroup.y * threads_per_threadgroup.x"
      " + thread_position_in_threadgroup.z * threads_per_threadgroup.x * "
      "threads_per_threadgroup.y;\n"
      "  const uint threads_per_simdgroup = ZMLX_SIMD_WIDTH;\n"
      "  const uint thread_index_in_simdgroup = thread_index_in_threadgroup % "
      "ZMLX_SIMD_WIDTH;\n"
      "  const uint simdgroup_index_in_threadgroup = thread_index_in_threadgroup / "
      "ZMLX_SIMD_WIDTH;\n"
      "  const uint simdgroups_per_threadgroup = (threads_per_threadgroup.x * "
      "threads_per_threadgroup.y * threads_per_threadgroup.z + ZMLX_SIMD_WIDTH - 1u) / "
      "ZMLX_SIMD_WIDTH;\n");
}

static void cl_emit_kernel_begin(const zmlx_kspec *spec, zmlx_sb *sb) {
  zmlxi_sb_printf(sb, "__kernel void %s(\n", spec->entry);
  for (int i = 0; i < spec->n_params; i++) emit_param(&spec->params[i], sb);
  /* float4, not uchar: the pointee type sets the buffer's alignment, and
   * NVIDIA's OpenCL places a `__local uchar*` buffer at an address where
   * int loads through zmlx_dynamic_shared(int) fault. 16 bytes covers every
   * dialect type, as CUDA's dynamic shared memory does. */
  if (spec->uses_dynamic_shared) zmlxi_sb_append(sb, "    __local float4* zmlx_dyn_shared,\n");
  zmlxi_sb_append(sb, "    uint zmlx_grid_x, uint zmlx_grid_y, uint zmlx_grid_z) {\n");
  /* OpenCL allows __local variables only at kernel function scope, so the
   * SIMD emulation's scratch is declared here, first, not in a helper. */
  if (spec->uses_simd)
    zmlxi_sb_append(sb, "  __local float zmlx_simd_scratch[ZMLX_SIMD_SCRATCH];\n");
  for (int i = 0; i < spec->n_params; i++) emit_param_locals(&spec->params[i], sb);
  emit_index_names(sb);
  /* The guard compares the size_t global ids: the uint copies above would
   * wrap for a grid near 2^32 and let the last group's extras through. */
  if (spec->guard_grid)
    zmlxi_sb_append(sb,
                   "  if (get_global_id(0) >= zmlx_grid_x || get_global_id(1) >= zmlx_grid_y ||"
                   " get_global_id(2) >= zmlx_grid_z) return;\n");
}

static void cl_emit_kernel_end(const zmlx_kspec *spec, zmlx_sb *sb) {
  (void)spec;
  zmlxi_sb_append(sb, "}\n");
}

/* OpenCL C's keywords, address spaces and scalar type names. */
static const char *const cl_reserved[] = {
    "kernel", "__kernel", "global", "__global", "local", "__local", "constant", "__constant",
    "private", "__private", "generic", "read_only", "write_only", "read_write", "uniform",
    "pipe", "bool", "uchar", "ushort", "uint", "ulong", "half", "size_t", "ptrdiff_t",
    "intptr_t", "uintptr_t", "image2d_t", "image3d_t", "sampler_t", "event_t", NULL};

const zmlx_dialect zmlxi_dialect_opencl = {
    .kind = ZMLX_BACKEND_OPENCL,
    .name = "opencl",
    .language = "OpenCL C",
    .native_simd = 0,
    .prelude = zmlxi_res_prelude_cl,
    .type_name = cl_type_name,
    .emit_kernel_begin = cl_emit_kernel_begin,
    .emit_kernel_end = cl_emit_kernel_end,
    .reserved_words = cl_reserved,
};
