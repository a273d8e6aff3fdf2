/*
 * Metal dialect: renders kernel signatures as Metal Shading Language for
 * MLX users on Apple silicon. Emission only — zmlx has no Metal runtime.
 *
 * Every array, geometry value and scalar gets its own [[buffer(i)]] slot
 * in parameter order (inputs, outputs, scalars), the caller's grid comes
 * last as a uint3, and the index names are bound straight to Metal's own
 * attributes.
 */
#include "runtime/internal.h"

extern const char zmlxi_res_prelude_metal[];

static const char *metal_type_name(zmlx_dtype dt) {
  switch (dt) {
    case ZMLX_BOOL: return "uchar";
    case ZMLX_U8: return "uchar";
    case ZMLX_I8: return "char"; /* signed in Metal */
    case ZMLX_I32: return "int";
    case ZMLX_U32: return "uint";
    case ZMLX_I64: return "zmlx_i64";
    case ZMLX_F16: return "zmlx_half";
    case ZMLX_BF16: return "zmlx_bf16";
    case ZMLX_F32: return "float";
    case ZMLX_F64: return "double"; /* Metal has none: the compiler says so */
    case ZMLX_DTYPE_COUNT: break;
  }
  return "float";
}

/* One parameter; *slot is the next [[buffer(i)]] index. A scalar is a
 * constant reference (what setBytes binds); an array a device pointer,
 * then the geometry the body mentions. */
static void emit_param(const zmlx_kparam *p, int *slot, zmlx_sb *sb) {
  const char *t = metal_type_name(p->dtype);
  if (p->is_scalar) {
    zmlxi_sb_printf(sb, "    constant %s& %s [[buffer(%d)]],\n", t, p->name, (*slot)++);
    return;
  }
  if (p->is_output)
    zmlxi_sb_printf(sb, "    device %s* %s [[buffer(%d)]],\n", t, p->name, (*slot)++);
  else
    zmlxi_sb_printf(sb, "    const device %s* %s [[buffer(%d)]],\n", t, p->name, (*slot)++);
  if (p->want_shape)
    zmlxi_sb_printf(sb, "    constant zmlx_kshape& %s_shape_v [[buffer(%d)]],\n", p->name, (*slot)++);
  if (p->want_strides)
    zmlxi_sb_printf(sb, "    constant zmlx_kstrides& %s_strides_v [[buffer(%d)]],\n", p->name,
                   (*slot)++);
  if (p->want_ndim)
    zmlxi_sb_printf(sb, "    constant int& %s_ndim [[buffer(%d)]],\n", p->name, (*slot)++);
}

static void emit_geometry_locals(const zmlx_kparam *p, zmlx_sb *sb) {
  if (p->is_scalar) return;
  if (p->want_shape)
    zmlxi_sb_printf(sb, "  constant int* %s_shape = %s_shape_v.v;\n", p->name, p->name);
  if (p->want_strides)
    zmlxi_sb_printf(sb, "  constant zmlx_i64* %s_strides = %s_strides_v.v;\n", p->name, p->name);
}

/* Metal hands out every index the dialect names (and a few more) as
 * attributes. The uint3 ones must agree in dimension, so all are uint3. */
static void emit_index_attributes(zmlx_sb *sb) {
  static const char *const vec3[] = {
      "thread_position_in_grid",       "thread_position_in_threadgroup",
      "threadgroup_position_in_grid",  "threads_per_threadgroup",
      "threadgroups_per_grid",         "threads_per_grid",
      "dispatch_threads_per_threadgroup"};
  static const char *const scalar[] = {
      "thread_index_in_threadgroup",   "thread_index_in_simdgroup",
      "simdgroup_index_in_threadgroup", "threads_per_simdgroup",
      "simdgroups_per_threadgroup",    "thread_index_in_quadgroup",
      "quadgroup_index_in_threadgroup", "quadgroups_per_threadgroup"};
  for (size_t i = 0; i < sizeof vec3 / sizeof vec3[0]; i++)
    zmlxi_sb_printf(sb, ",\n    uint3 %s [[%s]]", vec3[i], vec3[i]);
  for (size_t i = 0; i < sizeof scalar / sizeof scalar[0]; i++)
    zmlxi_sb_printf(sb, ",\n    uint %s [[%s]]", scalar[i], scalar[i]);
}

static void metal_emit_kernel_begin(const zmlx_kspec *spec, zmlx_sb *sb) {
  int slot = 0;
  zmlxi_sb_printf(sb, "[[kernel]] void %s(\n", spec->entry);
  for (int i = 0; i < spec->n_params; i++) emit_param(&spec->params[i], &slot, sb);
  zmlxi_sb_printf(sb, "    constant uint3& zmlx_grid [[buffer(%d)]]", slot);
  if (spec->uses_dynamic_shared)
    zmlxi_sb_append(sb, ",\n    threadgroup uchar* zmlx_dyn_shared [[threadgroup(0)]]");
  emit_index_attributes(sb);
  zmlxi_sb_append(sb, ") {\n");
  for (int i = 0; i < spec->n_params; i++) emit_geometry_locals(&spec->params[i], sb);
  zmlxi_sb_append(sb, "  const uint3 grid_size = zmlx_grid;\n");
  if (spec->guard_grid)
    zmlxi_sb_append(sb,
        "  if (thread_position_in_grid.x >= grid_size.x ||\n"
        "      thread_position_in_grid.y >= grid_size.y ||\n"
        "      thread_position_in_grid.z >= grid_size.z)\n"
        "    return;\n");
}

static void metal_emit_kernel_end(const zmlx_kspec *spec, zmlx_sb *sb) {
  (void)spec;
  zmlxi_sb_append(sb, "}\n");
}

/* Metal's address spaces and the C++ keywords it keeps (Metal is C++14). */
static const char *const metal_reserved[] = {
    "kernel", "device", "constant", "thread", "threadgroup", "threadgroup_imageblock",
    "vertex", "fragment", "half", "bfloat", "uint", "ushort", "uchar", "metal", "class",
    "namespace", "template", "typename", "using", "this", "new", "delete", "operator",
    "private", "public", "protected", "true", "false", "bool", "constexpr", NULL};

const zmlx_dialect zmlxi_dialect_metal = {
    .kind = ZMLX_BACKEND_METAL,
    .name = "metal",
    .language = "Metal",
    .native_simd = 1,
    .prelude = zmlxi_res_prelude_metal,
    .type_name = metal_type_name,
    .emit_kernel_begin = metal_emit_kernel_begin,
    .emit_kernel_end = metal_emit_kernel_end,
    .reserved_words = metal_reserved,
};
