/* The KV block cache (issue 11): K and V of every layer in fixed-size
 * blocks of block_size tokens ([layers, blocks, block_size, kv_heads,
 * head_dim] each), a free list, per-sequence block tables, fork with
 * reference counts and copy-on-write, all-or-nothing allocation. The
 * bookkeeping is on the host; the rows move by kernels/kv_rows.zk (a write
 * scatters new tokens into their slots, a read gathers a sequence) and
 * block copies by the backend's device copy. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/graph.h"
#include "kernel/kernel.h"
#include "kernel/kernel_set.h"
#include "ops/kernel_util.h"
#include "runtime/internal.h"

extern const char zmlxi_res_kv_rows_zk[];
extern const char zmlxi_res_paged_decode_zk[];
extern const char zmlxi_res_kv_rope_write_zk[];
extern const char zmlxi_res_paged_decode_part_zk[];
extern const char zmlxi_res_paged_decode_combine_zk[];
extern const char zmlxi_res_paged_decode_group_zk[];
extern const char zmlxi_res_vec_io_zk[];

enum { K_ROWS, K_DECODE, K_ROPE_WRITE, K_PART, K_COMBINE, K_GROUP };
static const zmlx_kernel_spec SPECS[] = {
    [K_ROWS] = ZMLX_KSPEC("zmlx_kv_rows", zmlxi_res_kv_rows_zk, "src, rows", "dst",
                          "n:i64, W:i64, base:i64", .dense_inputs = 1),
    [K_DECODE] = ZMLX_KSPEC("zmlx_paged_decode", zmlxi_res_paged_decode_zk,
                            "q, kc, vc, tables, lens", "out",
                            "n:i64, Hq:i32, Hkv:i32, MB:i32, BS:i32, base:i64, scale:f32",
                            .dense_inputs = 1),
    [K_ROPE_WRITE] = ZMLX_KSPEC("zmlx_kv_rope_write", zmlxi_res_kv_rope_write_zk,
                                "k, v, q, rows", "kc, vc, qout",
                                "n:i64, Wi:i32, Hkv:i32, Hq:i32, D:i32, R:i32, start:i64, base:i64, "
                                "log2_base:f32, scale:f32", .dense_inputs = 1),
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
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("kv cache", SPECS);

typedef struct kv_seq {
  int alive;
  int64_t len;      /* tokens */
  int32_t *blocks;  /* its block table */
  int64_t n_blocks, cap;
} kv_seq;

/* An i32 array kept on the device with its host copy (memo_upload). */
typedef struct kv_upload {
  int32_t *host;
  int64_t shape[2];
  zmlx_array *dev;
} kv_upload;

struct zmlx_kv_cache {
  zmlx_kv_cache_desc d;
  zmlx_device *dev;
  zmlx_array *k, *v;  /* [layers * blocks * block_size, kv_heads * head_dim] */
  int32_t *refs;      /* per block: how many sequences hold it */
  int32_t *free_list; /* a stack of free blocks */
  int64_t n_free;
  kv_seq *seqs;
  int64_t n_seqs, seq_cap;
  /* The last decode's block tables and context lengths, and the last
   * step write's slots: every layer of a decode step uses the same ones, so
   * only the first uploads them (an upload waits for the stream). */
  kv_upload tables, lens, step_slots;
};

static int64_t row_width(const zmlx_kv_cache *c) { return (int64_t)c->d.kv_heads * c->d.head_dim; }

/* *host (i32, shape[0] x shape[1]; malloc'd) on the device as *out, a new
 * reference: m's array when m holds the same values, else uploaded and
 * kept in m, which then owns *host (set to NULL). Inside a graph capture m
 * is neither used nor replaced: a captured launch must not keep an array
 * that a later call replaces (and the upload is refused there). */
static zmlx_status memo_upload(zmlx_kv_cache *c, kv_upload *m, int32_t **host, int ndim,
                               const int64_t *shape, zmlx_array **out) {
  const int64_t rows = shape[0], cols = ndim == 2 ? shape[1] : 1;
  const int capturing = zmlxi_capture_on(c->dev) != NULL;
  if (!capturing && m->dev && m->shape[0] == rows && m->shape[1] == cols &&
      !memcmp(m->host, *host, (size_t)(rows * cols) * sizeof **host)) {
    ZMLX_CHECK(zmlx_array_retain(m->dev));
    *out = m->dev;
    return ZMLX_OK;
  }
  ZMLX_CHECK(zmlx_array_from_host(c->dev, ZMLX_I32, ndim, shape, *host, out));
  if (capturing) return ZMLX_OK;
  free(m->host);
  zmlx_array_release(m->dev);
  m->host = *host;
  *host = NULL;
  m->shape[0] = rows;
  m->shape[1] = cols;
  m->dev = *out;
  return zmlx_array_retain(*out);
}

zmlx_status zmlx_kv_cache_create(const zmlx_kv_cache_desc *desc, zmlx_kv_cache **out) {
  ZMLX_REQUIRE_ARG(desc);
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  if (desc->struct_size != 0 && desc->struct_size != sizeof *desc)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kv_cache_create: desc->struct_size is %zu, this "
                     "library's zmlx_kv_cache_desc has %zu bytes", desc->struct_size, sizeof *desc);
  if (desc->layers < 1 || desc->kv_heads < 1 || desc->head_dim < 1 || desc->num_blocks < 1)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kv_cache_create: layers %d, kv_heads %d, head_dim "
                     "%d and num_blocks %lld must be positive", desc->layers, desc->kv_heads,
                     desc->head_dim, (long long)desc->num_blocks);
  if (desc->block_size != 8 && desc->block_size != 16 && desc->block_size != 32)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kv_cache_create: block_size %d (8, 16 or 32)",
                     desc->block_size);
  if (!zmlxi_dtype_is_f32_f16_bf16(desc->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "zmlx_kv_cache_create: dtype %s (f32, f16 or bf16)",
                     zmlx_dtype_name(desc->dtype));
  if (desc->num_blocks > INT32_MAX)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kv_cache_create: more than 2^31 blocks");
  zmlx_kv_cache *c = calloc(1, sizeof *c);
  if (!c) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_kv_cache_create: out of host memory");
  c->d = *desc;
  c->d.struct_size = sizeof *desc;
  zmlx_status st = zmlxi_device_resolve(desc->device, &c->dev);
  int64_t shape[2] = {(int64_t)desc->layers * desc->num_blocks * desc->block_size, row_width(c)};
  if (st == ZMLX_OK) st = zmlx_array_zeros(c->dev, desc->dtype, 2, shape, &c->k);
  if (st == ZMLX_OK) st = zmlx_array_zeros(c->dev, desc->dtype, 2, shape, &c->v);
  c->refs = calloc((size_t)desc->num_blocks, sizeof *c->refs);
  c->free_list = malloc((size_t)desc->num_blocks * sizeof *c->free_list);
  if (st == ZMLX_OK && (!c->refs || !c->free_list))
    st = zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_kv_cache_create: out of host memory");
  if (st != ZMLX_OK) {
    zmlx_kv_cache_destroy(c);
    return st;
  }
  for (int64_t b = 0; b < desc->num_blocks; b++) c->free_list[b] = (int32_t)(desc->num_blocks - 1 - b);
  c->n_free = desc->num_blocks;
  *out = c;
  return ZMLX_OK;
}

zmlx_status zmlx_kv_cache_destroy(zmlx_kv_cache *c) {
  if (!c) return ZMLX_OK;
  for (int64_t s = 0; s < c->n_seqs; s++) free(c->seqs[s].blocks);
  free(c->seqs);
  free(c->refs);
  free(c->free_list);
  zmlx_array_release(c->k);
  zmlx_array_release(c->v);
  kv_upload *kept[3] = {&c->tables, &c->lens, &c->step_slots};
  for (int i = 0; i < 3; i++) {
    free(kept[i]->host);
    zmlx_array_release(kept[i]->dev);
  }
  free(c);
  return ZMLX_OK;
}

static zmlx_status get_seq(zmlx_kv_cache *c, const char *call, int64_t id, kv_seq **out) {
  if (!c) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: cache is NULL", call);
  if (id < 0 || id >= c->n_seqs || !c->seqs[id].alive)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: sequence %lld %s", call, (long long)id,
                     id >= 0 && id < c->n_seqs ? "was freed" : "does not exist");
  *out = &c->seqs[id];
  return ZMLX_OK;
}

static zmlx_status new_seq(zmlx_kv_cache *c, int64_t *id) {
  if (c->n_seqs == c->seq_cap) {
    int64_t cap = c->seq_cap ? 2 * c->seq_cap : 16;
    kv_seq *s = realloc(c->seqs, (size_t)cap * sizeof *s);
    if (!s) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "kv cache: out of host memory");
    c->seqs = s;
    c->seq_cap = cap;
  }
  memset(&c->seqs[c->n_seqs], 0, sizeof c->seqs[0]);
  c->seqs[c->n_seqs].alive = 1;
  *id = c->n_seqs++;
  return ZMLX_OK;
}

zmlx_status zmlx_kv_cache_add_sequence(zmlx_kv_cache *c, int64_t *seq) {
  ZMLX_REQUIRE_ARG(c);
  ZMLX_REQUIRE_ARG(seq);
  return new_seq(c, seq);
}

static zmlx_status reserve_table(kv_seq *s, int64_t n) {
  if (n <= s->cap) return ZMLX_OK;
  int64_t cap = s->cap ? s->cap : 4;
  while (cap < n) cap *= 2;
  int32_t *b = realloc(s->blocks, (size_t)cap * sizeof *b);
  if (!b) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "kv cache: out of host memory");
  s->blocks = b;
  s->cap = cap;
  return ZMLX_OK;
}

zmlx_status zmlx_kv_cache_extend(zmlx_kv_cache *c, int64_t seq, int64_t n) {
  kv_seq *s = NULL;
  ZMLX_CHECK(get_seq(c, "zmlx_kv_cache_extend", seq, &s));
  if (n < 0) return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kv_cache_extend: n = %lld", (long long)n);
  const int64_t bs = c->d.block_size, need = (s->len + n + bs - 1) / bs - s->n_blocks;
  if (need > c->n_free)
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_kv_cache_extend: %lld more tokens of sequence "
                     "%lld need %lld blocks, %lld are free (nothing changed)", (long long)n,
                     (long long)seq, (long long)need, (long long)c->n_free);
  ZMLX_CHECK(reserve_table(s, s->n_blocks + need));
  for (int64_t i = 0; i < need; i++) {
    int32_t b = c->free_list[--c->n_free];
    c->refs[b] = 1;
    s->blocks[s->n_blocks++] = b;
  }
  s->len += n;
  return ZMLX_OK;
}

zmlx_status zmlx_kv_cache_fork(zmlx_kv_cache *c, int64_t seq, int64_t *child) {
  kv_seq *s = NULL;
  ZMLX_REQUIRE_ARG(child);
  ZMLX_CHECK(get_seq(c, "zmlx_kv_cache_fork", seq, &s));
  int64_t id;
  ZMLX_CHECK(new_seq(c, &id));
  s = &c->seqs[seq]; /* new_seq may have moved the table */
  kv_seq *t = &c->seqs[id];
  zmlx_status st = reserve_table(t, s->n_blocks);
  if (st != ZMLX_OK) {
    t->alive = 0;
    return st;
  }
  if (s->n_blocks) memcpy(t->blocks, s->blocks, (size_t)s->n_blocks * sizeof *t->blocks);
  t->n_blocks = s->n_blocks;
  t->len = s->len;
  for (int64_t i = 0; i < s->n_blocks; i++) c->refs[s->blocks[i]]++;
  *child = id;
  return ZMLX_OK;
}

zmlx_status zmlx_kv_cache_free_sequence(zmlx_kv_cache *c, int64_t seq) {
  kv_seq *s = NULL;
  ZMLX_CHECK(get_seq(c, "zmlx_kv_cache_free_sequence", seq, &s));
  for (int64_t i = 0; i < s->n_blocks; i++)
    if (--c->refs[s->blocks[i]] == 0) c->free_list[c->n_free++] = s->blocks[i];
  free(s->blocks);
  memset(s, 0, sizeof *s); /* alive = 0: the id is never reused */
  return ZMLX_OK;
}

zmlx_status zmlx_kv_cache_length(const zmlx_kv_cache *c, int64_t seq, int64_t *len) {
  kv_seq *s = NULL;
  ZMLX_REQUIRE_ARG(len);
  ZMLX_CHECK(get_seq((zmlx_kv_cache *)c, "zmlx_kv_cache_length", seq, &s));
  *len = s->len;
  return ZMLX_OK;
}

zmlx_status zmlx_kv_cache_stats(const zmlx_kv_cache *c, int64_t *free_blocks, int64_t *used_blocks) {
  ZMLX_REQUIRE_ARG(c);
  if (free_blocks) *free_blocks = c->n_free;
  if (used_blocks) *used_blocks = c->d.num_blocks - c->n_free;
  return ZMLX_OK;
}

/* Copy block `from` into `to` in every layer, K and V. */
static zmlx_status copy_block(zmlx_kv_cache *c, int32_t from, int32_t to) {
  const size_t es = zmlx_dtype_size(c->d.dtype);
  const size_t bytes = (size_t)c->d.block_size * (size_t)row_width(c) * es;
  void *stream = zmlxi_stream_or_default(NULL, c->dev)->handle;
  for (int l = 0; l < c->d.layers; l++) {
    const size_t lb = (size_t)l * (size_t)c->d.num_blocks;
    for (int i = 0; i < 2; i++) {
      zmlx_array *a = i ? c->v : c->k;
      ZMLX_CHECK(zmlxi_copy(c->dev, stream, a->buffer, (lb + (size_t)to) * bytes, a->buffer,
                            (lb + (size_t)from) * bytes, bytes));
    }
  }
  return ZMLX_OK;
}

/* Blocks [b0, b1] of s made its own (copy-on-write of shared ones), all or
 * nothing. */
static zmlx_status own_blocks(zmlx_kv_cache *c, kv_seq *s, int64_t b0, int64_t b1) {
  int64_t shared = 0;
  for (int64_t i = b0; i <= b1; i++) shared += c->refs[s->blocks[i]] > 1;
  if (shared > c->n_free)
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "kv cache: writing into %lld shared blocks needs "
                     "as many free ones, %lld are free (nothing written)", (long long)shared,
                     (long long)c->n_free);
  for (int64_t i = b0; i <= b1; i++) {
    int32_t old = s->blocks[i];
    if (c->refs[old] <= 1) continue;
    int32_t nb = c->free_list[c->n_free - 1];
    ZMLX_CHECK(copy_block(c, old, nb));
    c->n_free--;
    c->refs[nb] = 1;
    c->refs[old]--;
    s->blocks[i] = nb;
  }
  return ZMLX_OK;
}

/* The cache rows of positions [start, start + n) of s, as i32 on the device. */
static zmlx_status slot_rows(zmlx_kv_cache *c, const kv_seq *s, int64_t start, int64_t n,
                             zmlx_array **out) {
  int32_t *rows = malloc((size_t)(n > 0 ? n : 1) * sizeof *rows);
  if (!rows) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "kv cache: out of host memory");
  const int64_t bs = c->d.block_size;
  for (int64_t t = 0; t < n; t++) {
    int64_t p = start + t;
    rows[t] = (int32_t)((int64_t)s->blocks[p / bs] * bs + p % bs);
  }
  zmlx_status st = zmlx_array_from_host(c->dev, ZMLX_I32, 1, &n, rows, out);
  free(rows);
  return st;
}

static zmlx_status move_rows(zmlx_kv_cache *c, int mode, zmlx_array *src, zmlx_array *rows,
                             int64_t base, zmlx_array *dst, int64_t n) {
  if (n == 0) return ZMLX_OK;
  zmlx_kernel *k;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_ROWS, &k));
  double p[3] = {(double)(n * row_width(c)), (double)row_width(c), (double)base};
  zmlx_template_arg t[1] = {{"MODE", ZMLX_TEMPLATE_INT, ZMLX_F32, mode}};
  zmlx_array *in[2] = {src, rows};
  zmlx_kernel_call call = {.n_inputs = 2, .n_outputs = 1, .inputs = in, .outputs = &dst,
                           .templates = t, .n_templates = 1, .params = p, .device = c->dev};
  zmlxi_kernel_call_grid_1d(&call, n * row_width(c));
  return zmlx_kernel_launch(k, &call);
}

static zmlx_status check_tokens(zmlx_kv_cache *c, const char *call, const char *what, zmlx_array *x,
                                int64_t n) {
  char sh[96];
  if (!x) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: %s is NULL", call, what);
  if (x->ndim != 3 || x->shape[0] != n || x->shape[1] != c->d.kv_heads || x->shape[2] != c->d.head_dim)
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: %s %s must be [%lld tokens, kv_heads %d, "
                     "head_dim %d]", call, what, zmlxi_shape_str(sh, sizeof sh, x->ndim, x->shape),
                     (long long)n, c->d.kv_heads, c->d.head_dim);
  if (!zmlxi_dtype_is_f32_f16_bf16(x->dtype))
    return zmlxi_fail(ZMLX_ERR_DTYPE, "%s: %s has dtype %s", call, what, zmlx_dtype_name(x->dtype));
  if (x->buffer->device != c->dev)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: %s lives on another device", call, what);
  return ZMLX_OK;
}

/* What both writes check: the sequence, the layer, k and v [n, kv_heads,
 * head_dim] and positions [start, start + n) within the sequence. */
static zmlx_status check_write(zmlx_kv_cache *c, const char *call, int64_t seq, int layer,
                               int64_t start, zmlx_array *k, zmlx_array *v, kv_seq **s,
                               int64_t *n) {
  ZMLX_CHECK(get_seq(c, call, seq, s));
  if (layer < 0 || layer >= c->d.layers)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: layer %d of %d", call, layer, c->d.layers);
  if (!k) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: k is NULL", call);
  *n = k->ndim >= 1 ? k->shape[0] : 0;
  ZMLX_CHECK(check_tokens(c, call, "k", k, *n));
  ZMLX_CHECK(check_tokens(c, call, "v", v, *n));
  if (start < 0 || start + *n > (*s)->len)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: positions [%lld, %lld) are outside sequence "
                     "%lld's %lld tokens (zmlx_kv_cache_extend first)", call, (long long)start,
                     (long long)(start + *n), (long long)seq, (long long)(*s)->len);
  return ZMLX_OK;
}

/* The cache rows of positions [start, start + n) of s (n > 0), its shared
 * blocks among them copied first: the slots a write may fill. */
static zmlx_status claim_slots(zmlx_kv_cache *c, kv_seq *s, int64_t start, int64_t n,
                               zmlx_array **rows) {
  const int64_t bs = c->d.block_size;
  ZMLX_CHECK(own_blocks(c, s, start / bs, (start + n - 1) / bs));
  return slot_rows(c, s, start, n, rows);
}

zmlx_status zmlx_kv_cache_write(zmlx_kv_cache *c, int64_t seq, int layer, int64_t start,
                                zmlx_array *k, zmlx_array *v) {
  kv_seq *s = NULL;
  int64_t n = 0;
  ZMLX_CHECK(check_write(c, "zmlx_kv_cache_write", seq, layer, start, k, v, &s, &n));
  if (n == 0) return ZMLX_OK;
  zmlx_array *rows = NULL;
  ZMLX_CHECK(claim_slots(c, s, start, n, &rows));
  const int64_t bs = c->d.block_size;
  const int64_t base = (int64_t)layer * c->d.num_blocks * bs;
  zmlx_status st = move_rows(c, 0, k, rows, base, c->k, n);
  if (st == ZMLX_OK) st = move_rows(c, 0, v, rows, base, c->v, n);
  zmlx_array_release(rows);
  return st;
}

zmlx_status zmlx_kv_cache_read(zmlx_kv_cache *c, int64_t seq, int layer, zmlx_array **k,
                               zmlx_array **v) {
  kv_seq *s = NULL;
  ZMLX_REQUIRE_ARG(k);
  ZMLX_REQUIRE_ARG(v);
  *k = *v = NULL;
  ZMLX_CHECK(get_seq(c, "zmlx_kv_cache_read", seq, &s));
  if (layer < 0 || layer >= c->d.layers)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_kv_cache_read: layer %d of %d", layer, c->d.layers);
  int64_t shape[3] = {s->len, c->d.kv_heads, c->d.head_dim};
  zmlx_array *rows = NULL;
  zmlx_status st = slot_rows(c, s, 0, s->len, &rows);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(c->dev, NULL, c->d.dtype, 3, shape, k);
  if (st == ZMLX_OK) st = zmlxi_array_alloc(c->dev, NULL, c->d.dtype, 3, shape, v);
  const int64_t base = (int64_t)layer * c->d.num_blocks * c->d.block_size;
  if (st == ZMLX_OK) st = move_rows(c, 1, c->k, rows, base, *k, s->len);
  if (st == ZMLX_OK) st = move_rows(c, 1, c->v, rows, base, *v, s->len);
  zmlx_array_release(rows);
  if (st != ZMLX_OK) {
    zmlx_array_release(*k);
    zmlx_array_release(*v);
    *k = *v = NULL;
  }
  return st;
}

/* ------------------------------------------------------ decode attention */

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
    ZMLX_CHECK(get_seq(c, "zmlx_kv_cache_attention", seqs[i], &s));
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
  if (st == ZMLX_OK) st = memo_upload(c, &c->tables, &tab, 2, tsh, &at);
  if (st == ZMLX_OK) st = memo_upload(c, &c->lens, &lens, 1, tsh, &al);
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

/* ------------------------------------------------- RoPE + cache write */

/* The RoPE of a fused write, checked: opts (NULL: the defaults) and its
 * rotary dims R. */
typedef struct rope_write_opts {
  zmlx_rope_opts o;
  int R;
  double base, scale;
} rope_write_opts;

static zmlx_status check_rope(const zmlx_kv_cache *c, const char *call, const zmlx_rope_opts *rope,
                              rope_write_opts *rw) {
  memset(rw, 0, sizeof *rw);
  if (rope) rw->o = *rope;
  const int D = c->d.head_dim;
  rw->R = rw->o.rotary_dims ? rw->o.rotary_dims : D;
  if (rw->R % 2 || rw->R > D || rw->R < 0)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: rotary_dims %d (even, <= head_dim %d)", call,
                     rw->R, D);
  if (rw->o.mode != ZMLX_ROPE_HALF_SPLIT && rw->o.mode != ZMLX_ROPE_INTERLEAVED)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: unknown mode %d", call, (int)rw->o.mode);
  if (rw->o.offsets || rw->o.positions || rw->o.cos || rw->o.sin)
    return zmlxi_fail(ZMLX_ERR_UNSUPPORTED, "%s: positions come from the sequences; offsets, "
                     "positions and cos/sin tables are not taken here", call);
  rw->base = rw->o.base != 0 ? rw->o.base : 10000.0;
  rw->scale = rw->o.scale != 0 ? rw->o.scale : 1.0;
  return ZMLX_OK;
}

/* q [n, q_heads (a multiple of kv_heads), head_dim], f32 / f16 / bf16. */
static zmlx_status check_rope_q(const zmlx_kv_cache *c, const char *call, const zmlx_array *q,
                                int64_t n) {
  char sh[96];
  if (!q) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: q is NULL", call);
  if (q->ndim != 3 || q->shape[0] != n || q->shape[2] != c->d.head_dim ||
      q->shape[1] % c->d.kv_heads != 0 || !zmlxi_dtype_is_f32_f16_bf16(q->dtype))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "%s: q %s must be [%lld tokens, q_heads (a multiple of "
                     "%d), head_dim %d] of f32 / f16 / bf16", call,
                     zmlxi_shape_str(sh, sizeof sh, q->ndim, q->shape), (long long)n,
                     c->d.kv_heads, c->d.head_dim);
  if (q->buffer->device != c->dev)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: q lives on another device", call);
  return ZMLX_OK;
}

/* kv_rope_write.zk over n tokens into qo: rows holds their slots (and with
 * step their positions after them; else the positions are start ..). */
static zmlx_status launch_rope_write(zmlx_kv_cache *c, int layer, zmlx_array *k, zmlx_array *v,
                                     zmlx_array *q, zmlx_array *rows, int64_t n, int64_t start,
                                     int step, const rope_write_opts *rw, zmlx_array *qo) {
  zmlx_kernel *kern = NULL;
  ZMLX_CHECK(zmlxi_kernel_set_get(&KERNELS, K_ROPE_WRITE, &kern));
  const int D = c->d.head_dim, Wi = D - rw->R / 2;
  const int64_t Hq = q->shape[1];
  double p[10] = {(double)(n * (c->d.kv_heads + Hq) * Wi), Wi, c->d.kv_heads, (double)Hq, D,
                  rw->R, (double)start,
                  (double)((int64_t)layer * c->d.num_blocks * c->d.block_size),
                  (double)(float)log2(rw->base), rw->scale};
  zmlx_template_arg t[2] = {
      {"INTERLEAVED", ZMLX_TEMPLATE_BOOL, ZMLX_F32, rw->o.mode == ZMLX_ROPE_INTERLEAVED},
      {"STEP", ZMLX_TEMPLATE_BOOL, ZMLX_F32, step}};
  zmlx_array *in[4] = {k, v, q, rows}, *outs[3] = {c->k, c->v, qo};
  zmlx_kernel_call call = {.n_inputs = 4, .n_outputs = 3, .inputs = in, .outputs = outs,
                           .templates = t, .n_templates = 2, .params = p, .device = c->dev};
  zmlxi_kernel_call_grid_1d(&call, n * (c->d.kv_heads + Hq) * Wi);
  return zmlx_kernel_launch(kern, &call);
}

zmlx_status zmlx_kv_cache_write_rope(zmlx_kv_cache *c, int64_t seq, int layer, int64_t start,
                                     zmlx_array *k, zmlx_array *v, zmlx_array *q,
                                     const zmlx_rope_opts *rope, zmlx_array **q_out) {
  static const char call[] = "zmlx_kv_cache_write_rope";
  ZMLX_REQUIRE_ARG(q_out);
  *q_out = NULL;
  kv_seq *s = NULL;
  int64_t n = 0;
  rope_write_opts rw;
  ZMLX_CHECK(check_write(c, call, seq, layer, start, k, v, &s, &n));
  ZMLX_CHECK(check_rope_q(c, call, q, n));
  ZMLX_CHECK(check_rope(c, call, rope, &rw));
  zmlx_array *qo = NULL, *rows = NULL;
  ZMLX_CHECK(zmlxi_array_alloc(c->dev, NULL, q->dtype, 3, q->shape, &qo));
  zmlx_status st = ZMLX_OK;
  if (n > 0) {
    st = claim_slots(c, s, start, n, &rows);
    if (st == ZMLX_OK) st = launch_rope_write(c, layer, k, v, q, rows, n, start, 0, &rw, qo);
  }
  zmlx_array_release(rows);
  if (st != ZMLX_OK) {
    zmlx_array_release(qo);
    return st;
  }
  *q_out = qo;
  return ZMLX_OK;
}

/* The step's sequences: each alive, holding a token to write (length >= 1),
 * none twice (two rows would write one slot). */
static zmlx_status check_step_seqs(zmlx_kv_cache *c, const char *call, const int64_t *seqs,
                                   int64_t batch) {
  for (int64_t i = 0; i < batch; i++) {
    kv_seq *s = NULL;
    ZMLX_CHECK(get_seq(c, call, seqs[i], &s));
    if (s->len < 1)
      return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: sequence %lld is empty (zmlx_kv_cache_extend "
                       "it by the step's token first)", call, (long long)seqs[i]);
    for (int64_t j = 0; j < i; j++)
      if (seqs[j] == seqs[i])
        return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: sequence %lld is in the batch twice (rows "
                         "%lld and %lld)", call, (long long)seqs[i], (long long)j, (long long)i);
  }
  return ZMLX_OK;
}

/* The step's slots (each sequence's last position, its block copied first
 * where shared) then those positions, as i32 on the device (the same for
 * every layer of a step: uploaded once). */
static zmlx_status claim_step_slots(zmlx_kv_cache *c, const int64_t *seqs, int64_t batch,
                                    zmlx_array **rows) {
  const int64_t bs = c->d.block_size, n2 = 2 * batch;
  int32_t *h = malloc((size_t)n2 * sizeof *h);
  if (!h) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "kv cache: out of host memory");
  zmlx_status st = ZMLX_OK;
  for (int64_t i = 0; i < batch && st == ZMLX_OK; i++) {
    kv_seq *s = &c->seqs[seqs[i]];
    const int64_t p = s->len - 1;
    st = own_blocks(c, s, p / bs, p / bs);
    h[i] = (int32_t)((int64_t)s->blocks[p / bs] * bs + p % bs);
    h[batch + i] = (int32_t)p;
  }
  if (st == ZMLX_OK) st = memo_upload(c, &c->step_slots, &h, 1, &n2, rows);
  free(h);
  return st;
}

zmlx_status zmlx_kv_cache_write_rope_step(zmlx_kv_cache *c, int layer, const int64_t *seqs,
                                          int64_t batch, zmlx_array *k, zmlx_array *v,
                                          zmlx_array *q, const zmlx_rope_opts *rope,
                                          zmlx_array **q_out) {
  static const char call[] = "zmlx_kv_cache_write_rope_step";
  ZMLX_REQUIRE_ARG(q_out);
  *q_out = NULL;
  ZMLX_REQUIRE_ARG(c);
  if (batch < 0 || batch > INT32_MAX)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: batch %lld", call, (long long)batch);
  if (batch > 0 && !seqs) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "%s: seqs is NULL", call);
  if (layer < 0 || layer >= c->d.layers)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "%s: layer %d of %d", call, layer, c->d.layers);
  rope_write_opts rw;
  ZMLX_CHECK(check_tokens(c, call, "k", k, batch));
  ZMLX_CHECK(check_tokens(c, call, "v", v, batch));
  ZMLX_CHECK(check_rope_q(c, call, q, batch));
  ZMLX_CHECK(check_rope(c, call, rope, &rw));
  ZMLX_CHECK(check_step_seqs(c, call, seqs, batch));
  zmlx_array *qo = NULL, *rows = NULL;
  ZMLX_CHECK(zmlxi_array_alloc(c->dev, NULL, q->dtype, 3, q->shape, &qo));
  zmlx_status st = ZMLX_OK;
  if (batch > 0) {
    st = claim_step_slots(c, seqs, batch, &rows);
    if (st == ZMLX_OK) st = launch_rope_write(c, layer, k, v, q, rows, batch, 0, 1, &rw, qo);
  }
  zmlx_array_release(rows);
  if (st != ZMLX_OK) {
    zmlx_array_release(qo);
    return st;
  }
  *q_out = qo;
  return ZMLX_OK;
}
