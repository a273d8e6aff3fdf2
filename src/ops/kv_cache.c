/* The KV block cache (issue 11): K and V of every layer in fixed-size
 * blocks of block_size tokens ([layers, blocks, block_size, kv_heads,
 * head_dim] each), a free list, per-sequence block tables, fork with
 * reference counts and copy-on-write, all-or-nothing allocation. The
 * bookkeeping is on the host; the rows move by kernels/kv_rows.zk (a write
 * scatters new tokens into their slots, a read gathers a sequence) and
 * block copies by the backend's device copy; RoPE fused into the write.
 * PagedAttention decode over the cache is kv_decode.c; the state both
 * share is kv_cache_impl.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/graph.h"
#include "kernel/kernel.h"
#include "kernel/kernel_set.h"
#include "ops/kernel_util.h"
#include "runtime/internal.h"
#include "ops/kv_cache_impl.h"

extern const char zmlxi_res_kv_rows_zk[];
extern const char zmlxi_res_kv_rope_write_zk[];

enum { K_ROWS, K_ROPE_WRITE };
static const zmlx_kernel_spec SPECS[] = {
    [K_ROWS] = ZMLX_KSPEC("zmlx_kv_rows", zmlxi_res_kv_rows_zk, "src, rows", "dst",
                          "n:i64, W:i64, base:i64", .dense_inputs = 1),
    [K_ROPE_WRITE] = ZMLX_KSPEC("zmlx_kv_rope_write", zmlxi_res_kv_rope_write_zk,
                                "k, v, q, rows", "kc, vc, qout",
                                "n:i64, Wi:i32, Hkv:i32, Hq:i32, D:i32, R:i32, start:i64, base:i64, "
                                "log2_base:f32, scale:f32", .dense_inputs = 1),
};
static zmlx_kernel_set KERNELS = ZMLX_KERNEL_SET("kv cache", SPECS);

static int64_t row_width(const zmlx_kv_cache *c) { return (int64_t)c->d.kv_heads * c->d.head_dim; }

/* *host (i32, shape[0] x shape[1]; malloc'd) on the device as *out, a new
 * reference: m's array when m holds the same values, else uploaded and
 * kept in m, which then owns *host (set to NULL). Inside a graph capture m
 * is neither used nor replaced: a captured launch must not keep an array
 * that a later call replaces (and the upload is refused there). */
zmlx_status zmlxi_kv_memo_upload(zmlx_kv_cache *c, kv_upload *m, int32_t **host, int ndim,
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

zmlx_status zmlxi_kv_get_seq(zmlx_kv_cache *c, const char *call, int64_t id, kv_seq **out) {
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
  ZMLX_CHECK(zmlxi_kv_get_seq(c, "zmlx_kv_cache_extend", seq, &s));
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
  ZMLX_CHECK(zmlxi_kv_get_seq(c, "zmlx_kv_cache_fork", seq, &s));
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
  ZMLX_CHECK(zmlxi_kv_get_seq(c, "zmlx_kv_cache_free_sequence", seq, &s));
  for (int64_t i = 0; i < s->n_blocks; i++)
    if (--c->refs[s->blocks[i]] == 0) c->free_list[c->n_free++] = s->blocks[i];
  free(s->blocks);
  memset(s, 0, sizeof *s); /* alive = 0: the id is never reused */
  return ZMLX_OK;
}

zmlx_status zmlx_kv_cache_length(const zmlx_kv_cache *c, int64_t seq, int64_t *len) {
  kv_seq *s = NULL;
  ZMLX_REQUIRE_ARG(len);
  ZMLX_CHECK(zmlxi_kv_get_seq((zmlx_kv_cache *)c, "zmlx_kv_cache_length", seq, &s));
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
  ZMLX_CHECK(zmlxi_kv_get_seq(c, call, seq, s));
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
  ZMLX_CHECK(zmlxi_kv_get_seq(c, "zmlx_kv_cache_read", seq, &s));
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
    ZMLX_CHECK(zmlxi_kv_get_seq(c, call, seqs[i], &s));
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
  if (st == ZMLX_OK) st = zmlxi_kv_memo_upload(c, &c->step_slots, &h, 1, &n2, rows);
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
