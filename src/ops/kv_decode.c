/* PagedAttention decode over the KV block cache (issue 11; the cache
 * itself is kv_cache.c): split-K in partitions merged by a combine kernel
 * (FlashDecoding / vLLM v2), a grouped kernel that reads each K and V row
 * once for a GQA group's query heads (staged through threadgroup memory),
 * per-row kernels where it does not apply, and several query tokens a
 * sequence as rows of their own. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernel/kernel.h"
#include "kernel/kernel_set.h"
#include "ops/kernel_util.h"
#include "ops/kv_cache_impl.h"

extern const char zmlxi_res_paged_decode_zk[];
extern const char zmlxi_res_paged_decode_part_zk[];
extern const char zmlxi_res_paged_decode_combine_zk[];
extern const char zmlxi_res_paged_decode_group_zk[];
extern const char zmlxi_res_vec_io_zk[];

enum { K_DECODE, K_PART, K_COMBINE, K_GROUP };
static const zmlx_kernel_spec SPECS[] = {
    [K_DECODE] = ZMLX_KSPEC("zmlx_paged_decode", zmlxi_res_paged_decode_zk,
                            "q, kc, vc, tables, lens", "out",
                            "n:i64, Hq:i32, Hkv:i32, MB:i32, BS:i32, base:i64, scale:f32",
                            .dense_inputs = 1),
    [K_PART] = ZMLX_KSPEC("zmlx_paged_decode_part", zmlxi_res_paged_decode_part_zk,
                          "q, kc, vc, tables, lens", "pm, pl, pacc",
                          "n:i64, Hq:i32, Hkv:i32, MB:i32, BS:i32, base:i64, scale:f32, NP:i32, "
                          "P:i32", .dense_inputs = 1),
    [K_COMBINE] = ZMLX_KSPEC("zmlx_paged_decode_combine", zmlxi_res_paged_decode_combine_zk,
                             "pm, pl, pacc", "out", "n:i64, NP:i32", .dense_inputs = 1),
    [K_GROUP] = ZMLX_KSPEC("zmlx_paged_decode_group", zmlxi_res_paged_decode_group_zk,
                           "q, kc, vc, tables, lens", "pm, pl, pacc",
                           "n:i64, Hq:i32, Hkv:i32, MB:i32, BS:i32, base:i64, scale:f32, NP:i32, "
                           "P:i32", .prelude = zmlxi_res_vec_io_zk, .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("kv decode", SPECS);

/* The per-row kernels (q rows not 16-byte aligned, more query heads a kv
 * head than the grouped kernel holds in registers, or ZMLX_DECODE_SCALAR
 * set): tokens per partition of their split-K form, 0
 * for one pass: contexts of 2048 tokens and more in 512-token partitions
 * while the batch has under 8192 (sequence, head) rows.
 * ZMLX_DECODE_PARTITION=N forces N-token partitions (0: never split). */
static int64_t split_partition(int64_t max_len, int64_t rows) {
  const char *env = getenv("ZMLX_DECODE_PARTITION");
  if (env && *env) {
    long long p = atoll(env);
    return p > 0 && p < max_len ? p : 0;
  }
  return max_len >= 2048 && rows < 8192 ? 512 : 0;
}

/* The grouped decode (kernels/paged_decode_group.zk): a threadgroup per
 * (sequence, kv head, partition) reads each K and V row once for the GQA
 * group's query heads, 16 bytes a lane. Its geometry for this cache and q:
 * lanes a token (lpt), elements a 16-byte load (vec); 0 when it does not
 * apply (q's rows not 16-byte aligned, or the group's q and accumulators
 * would not fit in registers: more than 64 floats a lane). */
typedef struct group_geometry {
  int g, lpt, vec;
  int long_context; /* the long-context geometry below */
} group_geometry;

/* Contexts of DECODE_LONG_CONTEXT tokens and more, with rows of 16 chunks
 * (head_dim 128 in 16 bits), take 8 lanes a token (two chunks a lane: more
 * bytes in flight) and 1024-token partitions, where the group's queries
 * still fit. Measured on the H100 (bench/NOTES.md, staged, bf16): batch 32
 * x 4096 0.2130 -> 0.2016 ms, batch 1 x 32768 0.0707 -> 0.0605 ms; at 512
 * tokens 8 lanes lose (batch 64: 0.0613 -> 0.0751 ms). */
enum { DECODE_LONG_CONTEXT = 4096 };

static int group_applies(const zmlx_kv_cache *c, const zmlx_array *q, int64_t max_len,
                         group_geometry *gg) {
  const size_t es = zmlx_dtype_size(c->d.dtype);
  gg->g = (int)(q->shape[1] / c->d.kv_heads);
  gg->vec = (int)(16 / es);
  if (q->dtype != c->d.dtype || c->d.head_dim % gg->vec != 0) return 0;
  if (!zmlx_array_is_contiguous(q) || ((size_t)q->offset * es) % 16 != 0) return 0;
  const int chunks = c->d.head_dim / gg->vec;
  gg->lpt = chunks <= 8 ? 8 : chunks <= 16 ? 16 : 32;
  gg->long_context = max_len >= DECODE_LONG_CONTEXT && chunks == 16 && gg->g * 2 * gg->vec <= 64;
  if (gg->long_context) gg->lpt = 8;
  /* ZMLX_DECODE_LPT=N (2 .. 32, a power of two) overrides the lanes a token:
   * a tuning knob for bench sweeps (fewer lanes: more bytes and fewer
   * shared exponentials a lane, more registers) */
  const char *env = getenv("ZMLX_DECODE_LPT");
  const int want = env ? atoi(env) : 0;
  if (want >= 2 && want <= 32 && (want & (want - 1)) == 0) gg->lpt = want;
  const int per_lane = gg->g * ((chunks + gg->lpt - 1) / gg->lpt) * gg->vec;
  if (per_lane > 64 || getenv("ZMLX_DECODE_SCALAR")) return 0;
  /* where SIMD groups are emulated (PoCL) every lane exchange is two
   * barriers, and the per-row kernels decode ~7x faster: the grouped one
   * runs there only when asked (ZMLX_DECODE_GROUP=1, as the check does) */
  return zmlxi_ops_native_simd(c->dev) || getenv("ZMLX_DECODE_GROUP");
}

/* Tokens a partition of the grouped decode: ZMLX_DECODE_PARTITION=N, else
 * 512, or 1024 with the long-context geometry (batch 32 x 4096 is then
 * 1024 threadgroups, batch 1 x 32768 with 8 kv heads 256; 2048-token
 * partitions measured slower: 0.2504 ms at batch 32 x 4096). */
static int64_t group_partition(int64_t max_len, const group_geometry *gg) {
  const char *env = getenv("ZMLX_DECODE_PARTITION");
  if (env && *env && atoll(env) > 0) return atoll(env);
  const int64_t p = gg->long_context ? 1024 : 512;
  return max_len > 0 && max_len < p ? max_len : p;
}

/* Tokens the grouped decode loads ahead of the one it uses (its PF);
 * ZMLX_DECODE_PREFETCH=0 / 1 / 2 overrides DECODE_PREFETCH, to compare.
 * None: measured slower on the H100 (batch 32 x 4096, bf16: 0.319 ms at
 * PF 0, 0.332 at 1, 0.422 at 2; bench/NOTES.md), the registers of the
 * tokens held ahead costing more than their loads in flight gain. */
enum { DECODE_PREFETCH = 0 };
static int decode_prefetch(void) {
  const char *env = getenv("ZMLX_DECODE_PREFETCH");
  const int n = env && *env ? atoi(env) : DECODE_PREFETCH;
  return n < 0 ? 0 : n > 2 ? 2 : n;
}

/* Stages the grouped decode copies K and V through (its ST): 0 reads them
 * straight into registers; 2 .. 4 stage them through threadgroup memory,
 * ST - 1 tokens a lane ahead (asynchronous copies where the device has
 * them). 3 measured best on the H100 (bf16, bench/NOTES.md: batch 32 x
 * 4096 0.2978 ms unstaged, 0.2193 / 0.2125 / 0.2133 at 2 / 3 / 4 stages;
 * batch 1 x 32768 0.0914 -> 0.0703; batch 64 x 512 0.0827 -> 0.0614).
 * ZMLX_DECODE_STAGES=N overrides it, to compare. Partitions whose
 * block-table entries would not fit the kernel's 4 KB of them (more than
 * ~1000 blocks) run unstaged. */
enum { DECODE_STAGES = 3, DECODE_STAGE_TABLE_MAX = 1024 };
static int decode_stages(int64_t part, int64_t block_size) {
  const char *env = getenv("ZMLX_DECODE_STAGES");
  const int n = env && *env ? atoi(env) : DECODE_STAGES;
  if (n < 2 || part / block_size + 2 > DECODE_STAGE_TABLE_MAX) return 0;
  return n > 4 ? 4 : n;
}

/* The grouped kernel's threadgroup memory (its header comment's layout). */
static size_t group_shared_bytes(const group_geometry *gg, int64_t D, int stages, int64_t part,
                                 int64_t block_size) {
  const size_t tpg = (size_t)(128 / gg->lpt);
  const size_t cpl = (size_t)((D / gg->vec + gg->lpt - 1) / gg->lpt);
  size_t bytes = sizeof(float) * tpg * (size_t)gg->g * (size_t)(D + 2);
  if (stages) bytes += 16 * (size_t)stages * 2 * cpl * 128 + sizeof(int) * (size_t)(part / block_size + 2);
  return bytes;
}

/* Partials per (row, partition) from the grouped kernel (gg != NULL) or a
 * thread per (row, partition), then their merge into y. */
static zmlx_status split_decode(zmlx_kv_cache *c, int layer, zmlx_array *q, zmlx_array *at,
                                zmlx_array *al, int64_t mb, double scale, int64_t np_,
                                int64_t part, const group_geometry *gg, zmlx_array *y) {
  const int64_t B = q->shape[0], Hq = q->shape[1], rows = B * Hq, D = c->d.head_dim;
  int64_t s1 = rows * np_, s2[2] = {rows * np_, D};
  zmlx_array *pm = NULL, *pl = NULL, *pacc = NULL;
  zmlx_kernel *kp = NULL, *kc = NULL;
  zmlx_status st = zmlxi_array_alloc(c->dev, NULL, ZMLX_F32, 1, &s1, &pm);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(c->dev, NULL, ZMLX_F32, 1, &s1, &pl);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(c->dev, NULL, ZMLX_F32, 2, s2, &pacc);
  if (st == ZMLX_OK) st = zmlxi_kernel_set_get(&KERNELS, gg ? K_GROUP : K_PART, &kp);
  if (st == ZMLX_OK) st = zmlxi_kernel_set_get(&KERNELS, K_COMBINE, &kc);
  zmlx_template_arg t[9] = {{"HD", ZMLX_TEMPLATE_INT, ZMLX_F32, D}};
  if (st == ZMLX_OK) {
    const int64_t groups = B * c->d.kv_heads * np_;
    double p[9] = {(double)(gg ? groups : rows * np_), (double)Hq, (double)c->d.kv_heads,
                   (double)mb, (double)c->d.block_size,
                   (double)((int64_t)layer * c->d.num_blocks * c->d.block_size),
                   scale != 0 ? scale : 1.0 / sqrt((double)D), (double)np_, (double)part};
    zmlx_array *in[5] = {q, c->k, c->v, at, al}, *outs[3] = {pm, pl, pacc};
    zmlx_kernel_call call = {.n_inputs = 5, .n_outputs = 3, .inputs = in, .outputs = outs,
                             .templates = t, .n_templates = 1, .params = p, .device = c->dev};
    if (gg) {
      const int stages = decode_stages(part, c->d.block_size);
      t[1] = (zmlx_template_arg){"G", ZMLX_TEMPLATE_INT, ZMLX_F32, gg->g};
      t[2] = (zmlx_template_arg){"LPT", ZMLX_TEMPLATE_INT, ZMLX_F32, gg->lpt};
      t[3] = (zmlx_template_arg){"VEC", ZMLX_TEMPLATE_INT, ZMLX_F32, gg->vec};
      t[4] = (zmlx_template_arg){"XDT", ZMLX_TEMPLATE_INT, ZMLX_F32, zmlxi_ops_xdt(c->d.dtype)};
      t[5] = (zmlx_template_arg){"NATIVE_SIMD", ZMLX_TEMPLATE_BOOL, ZMLX_F32,
                                 zmlxi_ops_native_simd(c->dev)};
      t[6] = (zmlx_template_arg){"PF", ZMLX_TEMPLATE_INT, ZMLX_F32, stages ? 0 : decode_prefetch()};
      t[7] = (zmlx_template_arg){"ST", ZMLX_TEMPLATE_INT, ZMLX_F32, stages};
      t[8] = (zmlx_template_arg){"NATIVE_ASYNC", ZMLX_TEMPLATE_BOOL, ZMLX_F32,
                                 stages && zmlxi_ops_native_mma(c->dev)};
      call.n_templates = 9;
      call.grid[0] = groups * 128;
      call.grid[1] = call.grid[2] = 1;
      call.threadgroup[0] = 128;
      call.threadgroup[1] = call.threadgroup[2] = 1;
      call.dynamic_shared_bytes = group_shared_bytes(gg, D, stages, part, c->d.block_size);
    } else {
      zmlxi_kernel_call_grid_1d(&call, rows * np_);
    }
    st = zmlx_kernel_launch(kp, &call);
  }
  if (st == ZMLX_OK) {
    double p[2] = {(double)(rows * D), (double)np_};
    zmlx_array *in[3] = {pm, pl, pacc};
    zmlx_kernel_call call = {.n_inputs = 3, .n_outputs = 1, .inputs = in, .outputs = &y,
                             .templates = t, .n_templates = 1, .params = p, .device = c->dev};
    zmlxi_kernel_call_grid_1d(&call, rows * D);
    st = zmlx_kernel_launch(kc, &call);
  }
  zmlx_array_release(pm);
  zmlx_array_release(pl);
  zmlx_array_release(pacc);
  return st;
}

/* q of the decode: [batch, q_heads, head_dim] (one token a sequence) or
 * [batch, T, q_heads, head_dim] (each sequence's last T tokens). */
static zmlx_status check_decode_q(const zmlx_kv_cache *c, const zmlx_array *q) {
  char sh[96];
  const int hd = q->ndim - 1, hq = q->ndim - 2;
  if ((q->ndim != 3 && q->ndim != 4) || q->shape[hd] != c->d.head_dim ||
      q->shape[hq] % c->d.kv_heads != 0 || q->shape[hq] < 1)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_kv_cache_attention: q %s must be [batch, q_heads, "
                     "head_dim %d] or [batch, tokens, q_heads, head_dim] with q_heads a multiple "
                     "of the cache's kv_heads %d",
                     zmlxi_shape_str(sh, sizeof sh, q->ndim, q->shape), c->d.head_dim,
                     c->d.kv_heads);
  if (!zmlxi_dtype_is_f32_f16_bf16(q->dtype) || q->buffer->device != c->dev)
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_kv_cache_attention: q must be f32, f16 or bf16 on the "
                     "cache's device (it is %s)", zmlx_dtype_name(q->dtype));
  return ZMLX_OK;
}

/* The decode's rows on the host: row b T + t (query token t of sequence
 * seqs[b]) gets that sequence's block table, padded to the longest (*mb
 * entries), and its context up to the token: len - (T - 1 - t) positions
 * (0 when the sequence is shorter). *max_len: the longest. */
static zmlx_status decode_tables(zmlx_kv_cache *c, const int64_t *seqs, int64_t B, int64_t T,
                                 int32_t **tab, int32_t **lens, int64_t *mb, int64_t *max_len) {
  *mb = 1;
  for (int64_t i = 0; i < B; i++) {
    kv_seq *s = NULL;
    ZMLX_CHECK(zmlxi_kv_get_seq(c, "zmlx_kv_cache_attention", seqs[i], &s));
    if (s->n_blocks > *mb) *mb = s->n_blocks;
    if (s->len > INT32_MAX)
      return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "zmlx_kv_cache_attention: a context of 2^31 tokens");
  }
  const int64_t rows = B * T;
  *tab = calloc((size_t)(rows * *mb + 1), sizeof **tab);
  *lens = calloc((size_t)rows + 1, sizeof **lens);
  if (!*tab || !*lens) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
  *max_len = 0;
  for (int64_t r = 0; r < rows; r++) {
    const kv_seq *s = &c->seqs[seqs[r / T]];
    const int64_t len = s->len - (T - 1 - r % T);
    if (s->n_blocks) memcpy(*tab + r * *mb, s->blocks, (size_t)s->n_blocks * sizeof **tab);
    (*lens)[r] = (int32_t)(len > 0 ? len : 0);
    if (len > *max_len) *max_len = len;
  }
  return ZMLX_OK;
}

/* Decode of q [rows, Hq, D] against the device tables at, al ([rows, mb],
 * [rows]) into y: the grouped kernel, the per-row split-K kernels, or one
 * pass (see split_partition and group_applies). */
static zmlx_status decode_launch(zmlx_kv_cache *c, int layer, zmlx_array *q, zmlx_array *at,
                                 zmlx_array *al, int64_t mb, int64_t max_len, double scale,
                                 zmlx_array *y) {
  const int64_t B = q->shape[0], Hq = q->shape[1];
  if (B * Hq == 0) return ZMLX_OK;
  group_geometry gg;
  const int64_t part = split_partition(max_len, B * Hq);
  if (group_applies(c, q, max_len, &gg)) {
    const int64_t gp = group_partition(max_len, &gg);
    const int64_t np_ = max_len > 0 ? (max_len + gp - 1) / gp : 1;
    return split_decode(c, layer, q, at, al, mb, scale, np_, gp, &gg, y);
  }
  if (part > 0)
    return split_decode(c, layer, q, at, al, mb, scale, (max_len + part - 1) / part, part, NULL, y);
  zmlx_kernel *k;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_DECODE, &k));
  double p[7] = {(double)(B * Hq), (double)Hq, (double)c->d.kv_heads, (double)mb,
                 (double)c->d.block_size,
                 (double)((int64_t)layer * c->d.num_blocks * c->d.block_size),
                 scale != 0 ? scale : 1.0 / sqrt((double)c->d.head_dim)};
  zmlx_template_arg t[1] = {{"HD", ZMLX_TEMPLATE_INT, ZMLX_F32, c->d.head_dim}};
  zmlx_array *in[5] = {q, c->k, c->v, at, al};
  zmlx_kernel_call call = {.n_inputs = 5, .n_outputs = 1, .inputs = in, .outputs = &y,
                           .templates = t, .n_templates = 1, .params = p, .device = c->dev};
  zmlxi_kernel_call_grid_1d(&call, B * Hq);
  return zmlx_kernel_launch(k, &call);
}

zmlx_status zmlx_kv_cache_attention(zmlx_kv_cache *c, int layer, zmlx_array *q,
                                    const int64_t *seqs, double scale, zmlx_array **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(c);
  ZMLX_REQUIRE_ARG(q);
  ZMLX_REQUIRE_ARG(seqs);
  if (layer < 0 || layer >= c->d.layers)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kv_cache_attention: layer %d of %d", layer,
                     c->d.layers);
  ZMLX_CHECK(check_decode_q(c, q));
  /* several tokens a sequence: each token a row of its own, which reads the
   * sequence's table up to its position (the rows of one sequence are
   * neighbours, so their K / V reads mostly meet in the L2 cache) */
  const int64_t B = q->shape[0], T = q->ndim == 4 ? q->shape[1] : 1;
  const int64_t Hq = q->shape[q->ndim - 2], rows_shape[3] = {B * T, Hq, c->d.head_dim};
  int32_t *tab = NULL, *lens = NULL;
  int64_t mb = 1, max_len = 0;
  zmlx_array *q3 = NULL, *at = NULL, *al = NULL, *y = NULL;
  zmlx_status st = decode_tables(c, seqs, B, T, &tab, &lens, &mb, &max_len);
  int64_t tsh[2] = {B * T, mb};
  if (st == ZMLX_OK) st = zmlxi_kv_memo_upload(c, &c->tables, &tab, 2, tsh, &at);
  if (st == ZMLX_OK) st = zmlxi_kv_memo_upload(c, &c->lens, &lens, 1, tsh, &al);
  if (st == ZMLX_OK) st = zmlx_array_reshape(q, 3, rows_shape, &q3);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(c->dev, NULL, q->dtype, 3, rows_shape, &y);
  if (st == ZMLX_OK) st = decode_launch(c, layer, q3, at, al, mb, max_len, scale, y);
  if (st == ZMLX_OK && q->ndim == 4) {
    zmlx_array *y4 = NULL;
    st = zmlx_array_reshape(y, 4, q->shape, &y4);
    zmlx_array_release(y);
    y = y4;
  }
  free(tab);
  free(lens);
  zmlx_array_release(q3);
  zmlx_array_release(at);
  zmlx_array_release(al);
  if (st != ZMLX_OK) {
    zmlx_array_release(y);
    return st;
  }
  *out = y;
  return ZMLX_OK;
}
