/*
 * Codegen patterns: expression graphs -> dialect kernel bodies + launch
 * geometry (see patterns.h for the naming contract). Pure text generation:
 * no device is touched here, and equal arguments give equal bytes.
 *
 * Why the bodies look the way they do:
 *   - Every loop over elements, rows or columns is grid-stride, so a launch
 *     may cap its grid (a few waves of threads) whatever the tensor size.
 *   - Each expression is emitted inside its own { } block: the emitter's
 *     temporaries (t0, t1, ...) then never clash when a kernel holds several
 *     expressions or the same one in two places (vector body + scalar tail).
 *   - The vector layout reads and writes 16 bytes per access through
 *     `const device uint4*` / `float4*` casts. uint4 and float4 are native
 *     16-byte-aligned types in CUDA (NVRTC built-ins), OpenCL C and Metal,
 *     and `device` is each dialect's global qualifier, so one text compiles
 *     to LDG.128/STG.128 on NVIDIA and to vector accesses elsewhere without
 *     any prelude helper. 16-bit values are unpacked from the 32-bit lanes
 *     with shifts (little-endian on every zmlx target).
 */
#include "gen/patterns.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ names */

#define NAMES10(p) p "0", p "1", p "2", p "3", p "4", p "5", p "6", p "7", p "8", p "9"
static const char *const IN_NAMES[ZMLX_KERNEL_MAX_ARRAYS] = {
    NAMES10("in"), NAMES10("in1"), NAMES10("in2"), "in30", "in31"};
static const char *const OUT_NAMES[ZMLX_KERNEL_MAX_ARRAYS] = {
    NAMES10("out"), NAMES10("out1"), NAMES10("out2"), "out30", "out31"};
static const char *const PARAM_NAMES[ZMLX_KERNEL_MAX_PARAMS] = {
    NAMES10("p"), "p10", "p11", "p12", "p13", "p14", "p15"};
#undef NAMES10

/* Threadgroup memory of the tree combine: one float per thread. Row
 * geometry never asks for more threads (zmlxi_pattern_threads_per_row). */
#define TREE_SLOTS 1024

void zmlxi_pattern_kernel_free(zmlx_pattern_kernel *pk) {
  if (!pk) return;
  free(pk->body);
  pk->body = NULL;
}

zmlx_status zmlxi_pattern_kernel_create(const zmlx_pattern_kernel *pk, zmlx_kernel **out) {
  zmlx_kernel_desc d = {.name = pk->name,
                        .input_names = IN_NAMES,
                        .n_inputs = pk->n_inputs,
                        .output_names = OUT_NAMES,
                        .n_outputs = pk->n_outputs,
                        .source = pk->body,
                        .ensure_row_contiguous = pk->ensure_row_contiguous,
                        .param_names = pk->param_names,
                        .param_dtypes = pk->param_dtypes,
                        .n_params = pk->n_params};
  return zmlx_kernel_create(&d, out);
}

zmlx_status zmlxi_pattern_append_source(const zmlx_pattern_kernel *pk, zmlx_backend b,
                                       const zmlx_dtype *dtypes, const char *banner,
                                       zmlx_sb *sb) {
  zmlx_kernel *k = NULL;
  ZMLX_CHECK(zmlxi_pattern_kernel_create(pk, &k));
  zmlx_kernel_call call = {.n_inputs = pk->n_inputs, .n_outputs = pk->n_outputs,
                           .output_dtypes = dtypes + pk->n_inputs};
  char *src = NULL;
  zmlx_status st = zmlx_kernel_source(k, b, &call, dtypes, &src);
  zmlx_kernel_destroy(k);
  if (st != ZMLX_OK) return st;
  zmlxi_sb_printf(sb, "/* ==== %s: kernel '%s' ==== */\n", banner, pk->name);
  zmlxi_sb_append(sb, src);
  zmlx_free(src);
  return ZMLX_OK;
}

/* ------------------------------------------------------------ text building */

typedef struct gen {
  zmlx_sb sb;
  zmlx_status st; /* first failure; later appends are skipped */
} gen;

static void gen_init(gen *g) {
  zmlxi_sb_init(&g->sb);
  g->st = ZMLX_OK;
}

/* One line: indent, formatted text, newline. Lines are short and fixed. */
static void line(gen *g, const char *indent, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void line(gen *g, const char *indent, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  zmlxi_sb_append(&g->sb, indent);
  zmlxi_sb_append(&g->sb, buf);
  zmlxi_sb_append(&g->sb, "\n");
}

/* Statements computing every root of `e` into `stores`, in a block. */
static void expr_block(gen *g, const char *indent, const zmlx_expr *e,
                       const char *const *inputs, const char *const *stores) {
  if (g->st != ZMLX_OK) return;
  char inner[64];
  snprintf(inner, sizeof inner, "%s  ", indent);
  line(g, indent, "{");
  zmlx_expr_emit_ctx ctx = {.input_text = inputs, .param_text = PARAM_NAMES,
                            .root_store = stores, .temp_prefix = "t", .indent = inner};
  g->st = zmlxi_expr_emit(e, &ctx, &g->sb);
  line(g, indent, "}");
}

/* A one-root expression assigned to `var` ("var = %s"). */
static void expr_assign(gen *g, const char *indent, const zmlx_expr *e,
                        const char *const *inputs, const char *var) {
  char store[64];
  snprintf(store, sizeof store, "%s = %%s", var);
  const char *stores[1] = {store};
  expr_block(g, indent, e, inputs, stores);
}

/* Hand the text to `out`, named `<prefix>_<hash>`. */
static zmlx_status gen_finish(gen *g, const char *prefix, zmlx_pattern_kernel *out) {
  if (g->st != ZMLX_OK) {
    zmlxi_sb_free(&g->sb);
    return g->st;
  }
  char *body = NULL;
  ZMLX_CHECK(zmlxi_sb_finish(&g->sb, &body));
  out->body = body;
  snprintf(out->name, sizeof out->name, "%s_%08x", prefix, (unsigned)zmlxi_fnv1a32(body));
  return ZMLX_OK;
}

static void add_param(zmlx_pattern_kernel *pk, const char *name, zmlx_dtype dt) {
  pk->param_names[pk->n_params] = name;
  pk->param_dtypes[pk->n_params] = dt;
  pk->n_params++;
}

/* ------------------------------------------------------------ heuristics */

int zmlxi_pattern_threads_per_row(int64_t cols, int max_threads, int simd_width) {
  int limit = max_threads < 1024 ? max_threads : 1024;
  if (limit < 1) limit = 1;
  int cap = 1;
  while (cap * 2 <= limit) cap *= 2;
  int t = 1;
  while (t < simd_width && t * 2 <= cap) t *= 2;
  /* About 4 elements per thread: enough loads in flight per thread, and
   * the combine (log2 of the threads) stays small next to the row. */
  int64_t want = (cols + 3) / 4;
  while (t < want && t * 2 <= cap) t *= 2;
  return t;
}

static int group_threads(const zmlx_device_info *info) {
  int m = info->max_threads_per_threadgroup;
  return m >= 256 ? 256 : (m > 0 ? m : 1);
}

/* Sixteen waves of full occupancy (2048 threads per compute unit) before
 * the grid-stride loops take over. Measured on an H100 (bf16
 * x * sigmoid(x) * y, 16384 x 14336): two waves reached 92% of the copy
 * bandwidth, sixteen 99%; the scheduler overlaps one block's loads with
 * another's math only when there are blocks to spare. */
static int64_t thread_cap(const zmlx_device_info *info) {
  int64_t cu = info->compute_units > 0 ? info->compute_units : 1;
  return cu * 2048 * 16;
}

static int64_t clamp64(int64_t v, int64_t lo, int64_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

zmlx_pattern_geometry zmlxi_pattern_elementwise_geometry(zmlx_ew_layout layout, int64_t n,
                                                        int width,
                                                        const zmlx_device_info *info) {
  int64_t work = n;
  if (layout == ZMLX_EW_VECTOR && width > 0) {
    int64_t chunks = n / width, tail = n % width;
    work = chunks > tail ? chunks : tail;
  }
  zmlx_pattern_geometry g = {{clamp64(work, 1, thread_cap(info)), 1, 1},
                             {group_threads(info), 1, 1}};
  return g;
}

zmlx_pattern_geometry zmlxi_pattern_row_geometry(zmlx_row_mode mode, int64_t rows, int64_t cols,
                                                const zmlx_device_info *info) {
  if (mode == ZMLX_ROW_PER_THREAD) {
    zmlx_pattern_geometry g = {{clamp64(rows, 1, thread_cap(info)), 1, 1},
                               {group_threads(info), 1, 1}};
    return g;
  }
  int tg = zmlxi_pattern_threads_per_row(cols, info->max_threads_per_threadgroup,
                                        info->simd_width);
  /* Barriers need whole threadgroups: the grid is groups * tg. */
  int64_t groups = clamp64(rows, 1, (int64_t)1 << 20);
  zmlx_pattern_geometry g = {{groups * tg, 1, 1}, {tg, 1, 1}};
  return g;
}

zmlx_pattern_geometry zmlxi_pattern_col_geometry(int64_t cols, const zmlx_device_info *info) {
  zmlx_pattern_geometry g = {{clamp64(cols, 1, thread_cap(info)), 1, 1},
                             {group_threads(info), 1, 1}};
  return g;
}

/* ------------------------------------------------------------ elementwise */

static int dtype_bytes16(zmlx_dtype dt) { return dt == ZMLX_F16 || dt == ZMLX_BF16; }

int zmlxi_pattern_vector_width(const zmlx_dtype *dtypes, int n) {
  int smallest = 4;
  for (int i = 0; i < n; i++) {
    if (dtypes[i] != ZMLX_F32 && !dtype_bytes16(dtypes[i])) return 0;
    if (dtype_bytes16(dtypes[i])) smallest = 2;
  }
  return 16 / smallest;
}

typedef struct ew_names {
  char in[ZMLX_KERNEL_MAX_ARRAYS][48];
  char out[ZMLX_KERNEL_MAX_ARRAYS][48];
  const char *in_p[ZMLX_KERNEL_MAX_ARRAYS];
  const char *out_p[ZMLX_KERNEL_MAX_ARRAYS];
} ew_names;

/* in_fmt gets the input number and out_fmt the output number, e.g.
 * "in%d_load(zi)" and "out%d_store(zi, %%s)". */
static void ew_names_fill(ew_names *nm, const zmlx_expr *e, const char *in_fmt,
                          const char *out_fmt) {
  for (int i = 0; i < e->n_inputs; i++) {
    snprintf(nm->in[i], sizeof nm->in[i], in_fmt, i, i);
    nm->in_p[i] = nm->in[i];
  }
  for (int j = 0; j < e->n_roots; j++) {
    snprintf(nm->out[j], sizeof nm->out[j], out_fmt, j, j);
    nm->out_p[j] = nm->out[j];
  }
}

static const char *const GRID_LOOP =
    "for (zmlx_i64 zi = (zmlx_i64)thread_position_in_grid.x; zi < zn; "
    "zi += (zmlx_i64)grid_size.x) {";

static void ew_contiguous(gen *g, const zmlx_expr *e) {
  ew_names nm;
  ew_names_fill(&nm, e, "in%d_load(zi)", "out%d_store(zi, %%s)");
  line(g, "", "%s", GRID_LOOP);
  expr_block(g, "  ", e, nm.in_p, nm.out_p);
  line(g, "", "}");
}

/* Offsets of every used input from the flat output index: the innermost
 * dimensions by division, the outermost one is what remains. */
static void ew_strided(gen *g, const zmlx_expr *e) {
  ew_names nm;
  ew_names_fill(&nm, e, "in%d_load(zo%d)", "out%d_store(zi, %%s)");
  line(g, "", "%s", GRID_LOOP);
  int any = 0;
  for (int i = 0; i < e->n_inputs; i++) any |= zmlxi_expr_uses_input(e, i);
  if (any) {
    line(g, "  ", "zmlx_i64 zrem = zi;");
    for (int i = 0; i < e->n_inputs; i++)
      if (zmlxi_expr_uses_input(e, i)) line(g, "  ", "zmlx_i64 zo%d = 0;", i);
    line(g, "  ", "for (int zd = out0_ndim - 1; zd > 0; zd--) {");
    line(g, "    ", "const zmlx_i64 zc = zrem %% out0_shape[zd];");
    line(g, "    ", "zrem /= out0_shape[zd];");
    for (int i = 0; i < e->n_inputs; i++)
      if (zmlxi_expr_uses_input(e, i)) line(g, "    ", "zo%d += zc * in%d_strides[zd];", i, i);
    line(g, "  ", "}");
    for (int i = 0; i < e->n_inputs; i++)
      if (zmlxi_expr_uses_input(e, i)) line(g, "  ", "zo%d += zrem * in%d_strides[0];", i, i);
  }
  expr_block(g, "  ", e, nm.in_p, nm.out_p);
  line(g, "", "}");
}

/* Chunk zc of array `ptr` (dtype dt) into the private floats `arr`. */
static void vec_load(gen *g, const char *ptr, zmlx_dtype dt, const char *arr, int width) {
  int per_access = dt == ZMLX_F32 ? 4 : 8, accesses = width / per_access;
  for (int k = 0; k < accesses; k++) {
    int b = k * per_access;
    if (dt == ZMLX_F32) {
      line(g, "  ", "{ const float4 zv = ((const device float4*)%s)[zc * %d + %d];", ptr,
           accesses, k);
      line(g, "    ", "%s[%d] = zv.x; %s[%d] = zv.y; %s[%d] = zv.z; %s[%d] = zv.w; }", arr, b,
           arr, b + 1, arr, b + 2, arr, b + 3);
      continue;
    }
    const char *ty = dt == ZMLX_F16 ? "zmlx_half" : "zmlx_bf16";
    const char *cv = dt == ZMLX_F16 ? "zmlx_half_to_float" : "zmlx_bf16_to_float";
    line(g, "  ", "{ const uint4 zv = ((const device uint4*)%s)[zc * %d + %d];", ptr,
         accesses, k);
    static const char *const lane[4] = {"x", "y", "z", "w"};
    for (int w = 0; w < 4; w++)
      line(g, "    ", "%s[%d] = %s((%s)(zv.%s & 0xffffu)); %s[%d] = %s((%s)(zv.%s >> 16));",
           arr, b + 2 * w, cv, ty, lane[w], arr, b + 2 * w + 1, cv, ty, lane[w]);
    line(g, "  ", "}");
  }
}

static void vec_store(gen *g, const char *ptr, zmlx_dtype dt, const char *arr, int width) {
  int per_access = dt == ZMLX_F32 ? 4 : 8, accesses = width / per_access;
  static const char *const lane[4] = {"x", "y", "z", "w"};
  for (int k = 0; k < accesses; k++) {
    int b = k * per_access;
    if (dt == ZMLX_F32) {
      line(g, "  ", "{ float4 zv; zv.x = %s[%d]; zv.y = %s[%d]; zv.z = %s[%d]; zv.w = %s[%d];",
           arr, b, arr, b + 1, arr, b + 2, arr, b + 3);
      line(g, "    ", "((device float4*)%s)[zc * %d + %d] = zv; }", ptr, accesses, k);
      continue;
    }
    const char *cv = dt == ZMLX_F16 ? "zmlx_float_to_half" : "zmlx_float_to_bf16";
    line(g, "  ", "{ uint4 zv;");
    for (int w = 0; w < 4; w++)
      line(g, "    ", "zv.%s = (uint)%s(%s[%d]) | ((uint)%s(%s[%d]) << 16);", lane[w], cv, arr,
           b + 2 * w, cv, arr, b + 2 * w + 1);
    line(g, "    ", "((device uint4*)%s)[zc * %d + %d] = zv; }", ptr, accesses, k);
  }
}

static void ew_vector(gen *g, const zmlx_expr *e, const zmlx_dtype *dtypes) {
  zmlx_dtype used[ZMLX_KERNEL_MAX_ARRAYS];
  int n_used = 0;
  for (int i = 0; i < e->n_inputs; i++)
    if (zmlxi_expr_uses_input(e, i)) used[n_used++] = dtypes[i];
  for (int j = 0; j < e->n_roots; j++) used[n_used++] = dtypes[e->n_inputs + j];
  int width = zmlxi_pattern_vector_width(used, n_used);
  ew_names nm;
  ew_names_fill(&nm, e, "zx%d[ze]", "zy%d[ze] = %%s");
  line(g, "", "const zmlx_i64 zchunks = zn / %d;", width);
  line(g, "", "for (zmlx_i64 zc = (zmlx_i64)thread_position_in_grid.x; zc < zchunks; "
              "zc += (zmlx_i64)grid_size.x) {");
  char arr[16];
  for (int i = 0; i < e->n_inputs; i++) {
    if (!zmlxi_expr_uses_input(e, i)) continue;
    snprintf(arr, sizeof arr, "zx%d", i);
    line(g, "  ", "float %s[%d];", arr, width);
    vec_load(g, IN_NAMES[i], dtypes[i], arr, width);
  }
  for (int j = 0; j < e->n_roots; j++) line(g, "  ", "float zy%d[%d];", j, width);
  line(g, "  ", "for (int ze = 0; ze < %d; ze++) {", width);
  expr_block(g, "    ", e, nm.in_p, nm.out_p);
  line(g, "  ", "}");
  for (int j = 0; j < e->n_roots; j++) {
    snprintf(arr, sizeof arr, "zy%d", j);
    vec_store(g, OUT_NAMES[j], dtypes[e->n_inputs + j], arr, width);
  }
  line(g, "", "}");
  /* The last n % width elements, one per thread. */
  ew_names_fill(&nm, e, "in%d_load(zi)", "out%d_store(zi, %%s)");
  line(g, "", "{");
  line(g, "  ", "const zmlx_i64 zi = zchunks * %d + (zmlx_i64)thread_position_in_grid.x;",
       width);
  line(g, "  ", "if (zi < zn)");
  expr_block(g, "  ", e, nm.in_p, nm.out_p);
  line(g, "", "}");
}

zmlx_status zmlxi_pattern_elementwise(const zmlx_expr *e, zmlx_ew_layout layout,
                                     const zmlx_dtype *dtypes, zmlx_pattern_kernel *out) {
  ZMLX_REQUIRE_ARG(e);
  ZMLX_REQUIRE_ARG(out);
  memset(out, 0, sizeof *out);
  if (e->n_inputs + e->n_roots > ZMLX_KERNEL_MAX_ARRAYS || e->n_roots < 1 ||
      e->n_params + 1 > ZMLX_KERNEL_MAX_PARAMS)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "elementwise pattern: %d inputs, %d outputs and %d "
                     "parameters exceed the kernel limits (%d arrays, %d parameters)",
                     e->n_inputs, e->n_roots, e->n_params, ZMLX_KERNEL_MAX_ARRAYS,
                     ZMLX_KERNEL_MAX_PARAMS - 1);
  if (layout == ZMLX_EW_VECTOR && !dtypes)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "elementwise pattern: the vector layout needs dtypes");
  out->n_inputs = e->n_inputs;
  out->n_outputs = e->n_roots;
  for (int i = 0; i < e->n_params; i++) add_param(out, PARAM_NAMES[i], ZMLX_F32);
  add_param(out, "zn", ZMLX_I64);
  gen g;
  gen_init(&g);
  const char *prefix = "ew_contig";
  if (layout == ZMLX_EW_STRIDED) {
    ew_strided(&g, e);
    prefix = "ew_strided";
  } else if (layout == ZMLX_EW_VECTOR) {
    ew_vector(&g, e, dtypes);
    prefix = "ew_vec";
  } else {
    ew_contiguous(&g, e);
  }
  return gen_finish(&g, prefix, out);
}

/* ------------------------------------------------------------ row patterns */

static int is_input(const zmlx_expr *e, int32_t id, int index) {
  return e->nodes[id].op == ZMLX_EOP_INPUT && e->nodes[id].arg[0] == index;
}

int zmlxi_pattern_simd_combine(const zmlx_expr *c, const char **kind) {
  if (!c || c->n_roots != 1) return 0;
  const zmlx_enode *r = &c->nodes[c->roots[0]];
  const char *k = r->op == ZMLX_EOP_ADD ? "sum"
                  : r->op == ZMLX_EOP_MAX ? "max"
                  : r->op == ZMLX_EOP_MIN ? "min" : NULL;
  if (!k) return 0;
  int ab = is_input(c, r->arg[0], 0) && is_input(c, r->arg[1], 1);
  int ba = is_input(c, r->arg[0], 1) && is_input(c, r->arg[1], 0);
  if (!ab && !ba) return 0;
  if (kind) *kind = k;
  return 1;
}

zmlx_row_mode zmlxi_pattern_group_mode(zmlx_backend b) {
  const zmlx_dialect *d = zmlxi_dialect_for(b);
  return d && !d->native_simd ? ZMLX_ROW_PER_GROUP_SHARED : ZMLX_ROW_PER_GROUP;
}

typedef struct rowgen {
  gen g;
  zmlx_row_mode mode;
} rowgen;

static int per_group(const rowgen *rg) { return rg->mode != ZMLX_ROW_PER_THREAD; }

/* Kernel name prefix into buf: "_tg" for SIMD + threadgroup memory, "_sh"
 * for threadgroup memory only. */
static const char *mode_prefix(zmlx_row_mode mode, const char *base, char *buf, size_t cap) {
  snprintf(buf, cap, "%s%s", base,
           mode == ZMLX_ROW_PER_GROUP ? "_tg" : mode == ZMLX_ROW_PER_GROUP_SHARED ? "_sh" : "");
  return buf;
}

static void rows_begin(rowgen *rg, int tree) {
  gen *g = &rg->g;
  if (per_group(rg)) {
    line(g, "", "threadgroup float zred[%d];", tree ? TREE_SLOTS : 32);
    line(g, "", "const uint ztid = thread_position_in_threadgroup.x;");
    line(g, "", "const uint znt = threads_per_threadgroup.x;");
  }
  line(g, "", "const float zlen = (float)zcols;");
}

static void rows_loop_open(rowgen *rg) {
  if (per_group(rg))
    line(&rg->g, "", "for (zmlx_i64 zrow = (zmlx_i64)threadgroup_position_in_grid.x; "
                     "zrow < zrows; zrow += (zmlx_i64)threadgroups_per_grid.x) {");
  else
    line(&rg->g, "", "for (zmlx_i64 zrow = (zmlx_i64)thread_position_in_grid.x; "
                     "zrow < zrows; zrow += (zmlx_i64)grid_size.x) {");
  line(&rg->g, "  ", "const zmlx_i64 zbase = zrow * zcols;");
}

static void cols_loop_open(rowgen *rg, const char *indent) {
  if (per_group(rg))
    line(&rg->g, indent, "for (zmlx_i64 zj = (zmlx_i64)ztid; zj < zcols; "
                         "zj += (zmlx_i64)znt) {");
  else
    line(&rg->g, indent, "for (zmlx_i64 zj = 0; zj < zcols; zj++) {");
}

/* Every thread of the group ends with the group's combined `var`, through
 * the SIMD helper `kind`: per SIMD group, then across SIMD groups via zred
 * (`pad` fills the lanes past the number of SIMD groups). */
static void simd_combine(gen *g, const char *kind, const char *var, const char *pad) {
  line(g, "  ", "%s = zmlx_simd_%s(%s);", var, kind, var);
  line(g, "  ", "if (thread_index_in_simdgroup == 0u) zred[simdgroup_index_in_threadgroup] = %s;",
       var);
  line(g, "  ", "zmlx_barrier();");
  line(g, "  ", "%s = zmlx_simd_%s(thread_index_in_simdgroup < simdgroups_per_threadgroup ? "
                "zred[thread_index_in_simdgroup] : %s);", var, kind, pad);
  line(g, "  ", "zmlx_barrier();");
}

/* Tree over threadgroup memory (any group size): the combine graph, or
 * the built-in `kind` when graph is NULL. */
static void tree_combine(gen *g, const zmlx_expr *combine, const char *kind, const char *var) {
  static const char *const ab[2] = {"zred[ztid]", "zred[ztid + zs]"};
  line(g, "  ", "zred[ztid] = %s;", var);
  line(g, "  ", "zmlx_barrier();");
  line(g, "  ", "{");
  line(g, "    ", "uint zs = 1u;");
  line(g, "    ", "while (zs * 2u < znt) zs *= 2u;");
  line(g, "    ", "for (; zs > 0u; zs >>= 1) {");
  line(g, "      ", "if (ztid < zs && ztid + zs < znt)");
  if (combine)
    expr_assign(g, "      ", combine, ab, "zred[ztid]");
  else if (!strcmp(kind, "sum"))
    line(g, "        ", "zred[ztid] = zred[ztid] + zred[ztid + zs];");
  else
    line(g, "        ", "zred[ztid] = %s(zred[ztid], zred[ztid + zs]);",
         !strcmp(kind, "max") ? "fmax" : "fmin");
  line(g, "      ", "zmlx_barrier();");
  line(g, "    ", "}");
  line(g, "  ", "}");
  line(g, "  ", "%s = zred[0];", var);
  line(g, "  ", "zmlx_barrier();");
}

/* Merge every thread's `var` of the group: `combine` is a graph, or NULL
 * with a built-in `kind` ("sum", "max", "min"). */
static void group_combine(rowgen *rg, const zmlx_expr *combine, const char *kind,
                          const char *var, const char *pad) {
  if (!per_group(rg)) return;
  if (combine && zmlxi_pattern_simd_combine(combine, &kind)) combine = NULL;
  if (rg->mode == ZMLX_ROW_PER_GROUP && !combine)
    simd_combine(&rg->g, kind, var, pad);
  else
    tree_combine(&rg->g, combine, kind, var);
}

/* The start value of reduction k, computed once before the row loop. */
static void reduction_init(rowgen *rg, const zmlx_row_reduction *r, int k) {
  char var[24];
  snprintf(var, sizeof var, "zinit%d", k);
  line(&rg->g, "", "float %s;", var);
  expr_assign(&rg->g, "", r->init, NULL, var);
}

/* Reduction k over the current row into zr<k> (every thread has it). */
static void reduction_row(rowgen *rg, const zmlx_row_reduction *r, int k) {
  gen *g = &rg->g;
  char acc[24], init[24], res[24];
  snprintf(acc, sizeof acc, "zacc%d", k);
  snprintf(init, sizeof init, "zinit%d", k);
  snprintf(res, sizeof res, "zr%d", k);
  line(g, "  ", "float %s = %s;", acc, init);
  cols_loop_open(rg, "  ");
  const char *step_in[3] = {acc, "in0_load(zbase + zj)", "zr0"};
  expr_assign(g, "    ", r->step, step_in, acc);
  line(g, "  ", "}");
  group_combine(rg, r->combine, NULL, acc, init);
  line(g, "  ", "float %s;", res);
  if (r->finalize) {
    const char *fin_in[3] = {acc, "zlen", "zr0"};
    expr_assign(g, "  ", r->finalize, fin_in, res);
  } else {
    line(g, "  ", "%s = %s;", res, acc);
  }
}

static void write_loop(rowgen *rg, const zmlx_expr *write) {
  static const char *const in[4] = {"in0_load(zbase + zj)", "zr0", "zr1", "zlen"};
  cols_loop_open(rg, "  ");
  const char *store[1] = {"out0_store(zbase + zj, %s)"};
  expr_block(&rg->g, "    ", write, in, store);
  line(&rg->g, "  ", "}");
}

static zmlx_status check_reduction(const zmlx_row_reduction *r, zmlx_row_mode mode) {
  if (!r || !r->init || !r->step)
    return zmlxi_fail(ZMLX_ERR_NULL_ARG, "row pattern: a reduction needs init and step graphs");
  if (mode != ZMLX_ROW_PER_THREAD && !r->combine)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "row pattern: a threadgroup per row needs a combine");
  return ZMLX_OK;
}

static void row_kernel_init(zmlx_pattern_kernel *out) {
  memset(out, 0, sizeof *out);
  out->n_inputs = 1;
  out->n_outputs = 1;
  out->ensure_row_contiguous = 1;
  add_param(out, "zrows", ZMLX_I64);
  add_param(out, "zcols", ZMLX_I64);
}

static int needs_tree(zmlx_row_mode mode, const zmlx_row_reduction *r, int n) {
  if (mode == ZMLX_ROW_PER_GROUP_SHARED) return 1;
  for (int k = 0; k < n; k++)
    if (r[k].combine && !zmlxi_pattern_simd_combine(r[k].combine, NULL)) return 1;
  return 0;
}

zmlx_status zmlxi_pattern_row_reduce(const zmlx_row_reduction *r, zmlx_row_mode mode,
                                    zmlx_pattern_kernel *out) {
  ZMLX_REQUIRE_ARG(out);
  ZMLX_CHECK(check_reduction(r, mode));
  row_kernel_init(out);
  rowgen rg = {.mode = mode};
  char prefix[32];
  gen_init(&rg.g);
  rows_begin(&rg, needs_tree(mode, r, 1));
  reduction_init(&rg, r, 0);
  rows_loop_open(&rg);
  reduction_row(&rg, r, 0);
  line(&rg.g, "  ", per_group(&rg) ? "if (ztid == 0u) out0_store(zrow, zr0);"
                                    : "out0_store(zrow, zr0);");
  line(&rg.g, "", "}");
  return gen_finish(&rg.g, mode_prefix(mode, "row_reduce", prefix, sizeof prefix), out);
}

zmlx_status zmlxi_pattern_row_map_reduce(const zmlx_row_reduction *r, int n_reduce,
                                        const zmlx_expr *write, zmlx_row_mode mode,
                                        zmlx_pattern_kernel *out) {
  ZMLX_REQUIRE_ARG(out);
  ZMLX_REQUIRE_ARG(write);
  if (n_reduce < 1 || n_reduce > 2)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "row map-reduce: 1 or 2 reductions, not %d", n_reduce);
  for (int k = 0; k < n_reduce; k++) ZMLX_CHECK(check_reduction(&r[k], mode));
  row_kernel_init(out);
  rowgen rg = {.mode = mode};
  char prefix[32];
  gen_init(&rg.g);
  rows_begin(&rg, needs_tree(mode, r, n_reduce));
  for (int k = 0; k < n_reduce; k++) reduction_init(&rg, &r[k], k);
  rows_loop_open(&rg);
  for (int k = 0; k < n_reduce; k++) reduction_row(&rg, &r[k], k);
  if (n_reduce == 1) line(&rg.g, "  ", "const float zr1 = 0.0f;");
  write_loop(&rg, write);
  line(&rg.g, "", "}");
  return gen_finish(&rg.g, mode_prefix(mode, "row_mapred", prefix, sizeof prefix), out);
}

/* Running max zm and sum zs of exp(x - zm), rescaled when the max grows.
 * -inf elements are skipped: they add exp(-inf - max) = 0 to any row with
 * a finite max (and a row that is all -inf ends with zm = -inf, zs = 0,
 * so `write` sees the same r0 and NaNs as the two-pass form). NaN inputs
 * still reach zs through exp(NaN - zm). */
static void online_sweep(rowgen *rg, const zmlx_expr *map0) {
  gen *g = &rg->g;
  line(g, "  ", "float zm = -ZMLX_INF, zs = 0.0f;");
  cols_loop_open(rg, "  ");
  line(g, "    ", "float zx;");
  if (map0) {
    const char *in[1] = {"in0_load(zbase + zj)"};
    expr_assign(g, "    ", map0, in, "zx");
  } else {
    line(g, "    ", "zx = in0_load(zbase + zj);");
  }
  line(g, "    ", "if (zx != -ZMLX_INF) {");
  line(g, "      ", "const float zmn = fmax(zm, zx);");
  line(g, "      ", "zs = (zmn == zm ? zs : zs * exp(zm - zmn)) + exp(zx - zmn);");
  line(g, "      ", "zm = zmn;");
  line(g, "    ", "}");
  line(g, "  ", "}");
}

/* Merge the threads' (zm, zs) pairs: the group max, then each sum
 * rescaled to it and added. */
static void online_combine(rowgen *rg) {
  if (!per_group(rg)) return;
  gen *g = &rg->g;
  line(g, "  ", "float zmax = zm;");
  group_combine(rg, NULL, "max", "zmax", "-ZMLX_INF");
  line(g, "  ", "zs = zm == zmax ? zs : zs * exp(zm - zmax);");
  group_combine(rg, NULL, "sum", "zs", "0.0f");
  line(g, "  ", "zm = zmax;");
}

zmlx_status zmlxi_pattern_row_online(const zmlx_expr *map0, const zmlx_expr *finalize1,
                                    const zmlx_expr *write, zmlx_row_mode mode,
                                    zmlx_pattern_kernel *out) {
  ZMLX_REQUIRE_ARG(out);
  ZMLX_REQUIRE_ARG(write);
  row_kernel_init(out);
  rowgen rg = {.mode = mode};
  char prefix[32];
  gen_init(&rg.g);
  rows_begin(&rg, mode == ZMLX_ROW_PER_GROUP_SHARED);
  rows_loop_open(&rg);
  online_sweep(&rg, map0);
  online_combine(&rg);
  line(&rg.g, "  ", "const float zr0 = zm;");
  line(&rg.g, "  ", "float zr1;");
  if (finalize1) {
    const char *in[3] = {"zs", "zlen", "zr0"};
    expr_assign(&rg.g, "  ", finalize1, in, "zr1");
  } else {
    line(&rg.g, "  ", "zr1 = zs;");
  }
  write_loop(&rg, write);
  line(&rg.g, "", "}");
  return gen_finish(&rg.g, mode_prefix(mode, "row_online", prefix, sizeof prefix), out);
}

zmlx_status zmlxi_pattern_col_reduce(const zmlx_row_reduction *r, zmlx_pattern_kernel *out) {
  ZMLX_REQUIRE_ARG(out);
  ZMLX_CHECK(check_reduction(r, ZMLX_ROW_PER_THREAD));
  row_kernel_init(out);
  rowgen rg = {.mode = ZMLX_ROW_PER_THREAD};
  gen *g = &rg.g;
  gen_init(g);
  line(g, "", "const float zlen = (float)zrows;");
  reduction_init(&rg, r, 0);
  /* Neighbouring threads read neighbouring columns: coalesced rows. */
  line(g, "", "for (zmlx_i64 zcol = (zmlx_i64)thread_position_in_grid.x; zcol < zcols; "
              "zcol += (zmlx_i64)grid_size.x) {");
  line(g, "  ", "float zacc0 = zinit0;");
  line(g, "  ", "for (zmlx_i64 zr = 0; zr < zrows; zr++)");
  const char *step_in[3] = {"zacc0", "in0_load(zr * zcols + zcol)", "zr0"};
  expr_assign(g, "    ", r->step, step_in, "zacc0");
  line(g, "  ", "float zr0;");
  if (r->finalize) {
    const char *fin_in[3] = {"zacc0", "zlen", "zr0"};
    expr_assign(g, "  ", r->finalize, fin_in, "zr0");
  } else {
    line(g, "  ", "zr0 = zacc0;");
  }
  line(g, "  ", "out0_store(zcol, zr0);");
  line(g, "", "}");
  return gen_finish(g, "col_reduce", out);
}
