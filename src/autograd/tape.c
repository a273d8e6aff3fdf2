/* The thread-local tape: levels, value ids, node recording (see ad.h). */
#include "autograd/ad.h"

#include <stdlib.h>
#include <string.h>

/* Value ids live in the array's pointer-sized hook: 32 bits of tape
 * generation above 32 bits of value index. */
_Static_assert(sizeof(uintptr_t) >= 8, "autograd value ids need 64-bit pointers");

/* Deep enough for grad-of-grad-of-... in any sane program; a bound keeps a
 * runaway recursion of grad calls from growing the level stack forever. */
#define AD_MAX_LEVELS 64

typedef struct ad_level {
  int32_t node_start;
  int saved_paused; /* the pause depth to restore when the level ends */
} ad_level;

typedef struct ad_tape {
  uint32_t gen;
  uint32_t n_values;
  zmlx_ad_node **nodes;
  int32_t n_nodes, cap_nodes;
  ad_level levels[AD_MAX_LEVELS];
  int n_levels;
  int paused;
} ad_tape;

static _Thread_local ad_tape *tls_tape;
/* Generation 0 is never used, so a zeroed hook is never a valid id. */
static atomic_uint next_gen = 1;

static uint32_t new_generation(void) {
  uint32_t g;
  do g = atomic_fetch_add(&next_gen, 1);
  while (g == 0);
  return g;
}

/* f64 is not among them: it is host-side in zmlx and the expression
 * kernels refuse it, so nothing could propagate its gradient. */
int zmlxi_ad_is_float(zmlx_dtype dt) {
  return zmlxi_dtype_is_f32_f16_bf16(dt);
}

int zmlxi_ad_recording(void) {
  const ad_tape *t = tls_tape;
  return t && t->n_levels > 0 && t->paused == 0;
}

void zmlxi_ad_pause(void) {
  if (tls_tape) tls_tape->paused++;
}

void zmlxi_ad_resume(void) {
  if (tls_tape && tls_tape->paused > 0) tls_tape->paused--;
}

uint32_t zmlxi_ad_value_of(const zmlx_array *a) {
  const ad_tape *t = tls_tape;
  if (!t || !a || !a->grad_node) return 0;
  uintptr_t v = (uintptr_t)a->grad_node;
  uint32_t idx = (uint32_t)(v & 0xffffffffu);
  if ((uint32_t)(v >> 32) != t->gen || idx == 0 || idx > t->n_values) return 0;
  return idx;
}

int zmlxi_ad_should_record(zmlx_array *const *in, int n_in) {
  if (!zmlxi_ad_recording()) return 0;
  for (int i = 0; i < n_in; i++)
    if (zmlxi_ad_value_of(in[i])) return 1;
  return 0;
}

void zmlxi_ad_meta_of(const zmlx_array *a, zmlx_ad_meta *m) {
  memset(m, 0, sizeof *m);
  m->dtype = a->dtype;
  m->ndim = a->ndim;
  memcpy(m->shape, a->shape, (size_t)a->ndim * sizeof *m->shape);
  m->device = a->buffer->device;
}

/* ------------------------------------------------------------------ nodes */

static void node_free(zmlx_ad_node *n) {
  if (!n) return;
  for (int i = 0; n->in && i < n->n_in; i++) zmlx_array_release(n->in[i]);
  for (int j = 0; n->out && j < n->n_out; j++) zmlx_array_release(n->out[j]);
  if (n->rule && n->rule->free_ctx && n->ctx) n->rule->free_ctx(n->ctx);
  free(n->in_val);
  free(n->out_val);
  free(n->in_meta);
  free(n->out_meta);
  free(n->in);
  free(n->out);
  free(n);
}

static zmlx_ad_node *node_alloc(int n_in, int n_out) {
  zmlx_ad_node *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  size_t ni = (size_t)(n_in > 0 ? n_in : 1), no = (size_t)(n_out > 0 ? n_out : 1);
  n->n_in = n_in;
  n->n_out = n_out;
  n->in_val = calloc(ni, sizeof *n->in_val);
  n->out_val = calloc(no, sizeof *n->out_val);
  n->in_meta = calloc(ni, sizeof *n->in_meta);
  n->out_meta = calloc(no, sizeof *n->out_meta);
  n->in = calloc(ni, sizeof *n->in);
  n->out = calloc(no, sizeof *n->out);
  if (!n->in_val || !n->out_val || !n->in_meta || !n->out_meta || !n->in || !n->out) {
    node_free(n);
    return NULL;
  }
  return n;
}

static zmlx_status append_node(ad_tape *t, zmlx_ad_node *n) {
  if (t->n_nodes == t->cap_nodes) {
    int32_t cap = t->cap_nodes ? 2 * t->cap_nodes : 64;
    zmlx_ad_node **p = realloc(t->nodes, (size_t)cap * sizeof *p);
    if (!p) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "autograd: out of host memory (tape)");
    t->nodes = p;
    t->cap_nodes = cap;
  }
  t->nodes[t->n_nodes++] = n;
  return ZMLX_OK;
}

static zmlx_status new_value(ad_tape *t, zmlx_array *a, uint32_t *idx) {
  if (t->n_values == UINT32_MAX)
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "autograd: more than 2^32 values on one tape");
  *idx = ++t->n_values;
  a->grad_node = (void *)(((uintptr_t)t->gen << 32) | *idx);
  return ZMLX_OK;
}

static void fill_node(zmlx_ad_node *n, zmlx_array *const *in, zmlx_array *const *out,
                      unsigned save) {
  for (int i = 0; i < n->n_in; i++) {
    zmlxi_ad_meta_of(in[i], &n->in_meta[i]);
    n->in_val[i] = zmlxi_ad_value_of(in[i]);
    if (save & ZMLX_AD_SAVE_INPUTS) {
      zmlx_array_retain(in[i]);
      n->in[i] = in[i];
    }
  }
  for (int j = 0; j < n->n_out; j++) {
    zmlxi_ad_meta_of(out[j], &n->out_meta[j]);
    if (save & ZMLX_AD_SAVE_OUTPUTS) {
      zmlx_array_retain(out[j]);
      n->out[j] = out[j];
    }
  }
}

zmlx_status zmlxi_ad_record(const zmlx_ad_rule *rule, void *ctx, zmlx_array *const *in, int n_in,
                           zmlx_array *const *out, int n_out, unsigned save) {
  ad_tape *t = tls_tape;
  if (!zmlxi_ad_should_record(in, n_in)) {
    if (rule->free_ctx && ctx) rule->free_ctx(ctx);
    return ZMLX_OK;
  }
  zmlx_ad_node *n = node_alloc(n_in, n_out);
  if (!n) {
    if (rule->free_ctx && ctx) rule->free_ctx(ctx);
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "autograd: out of host memory (node)");
  }
  n->rule = rule;
  n->ctx = ctx;
  fill_node(n, in, out, save);
  zmlx_status st = append_node(t, n);
  if (st != ZMLX_OK) {
    node_free(n);
    return st;
  }
  /* Ids last: after a failure above the outputs stay plain arrays. Integer
   * outputs (indices, masks) carry no gradient and stay constants. */
  for (int j = 0; j < n_out && st == ZMLX_OK; j++)
    if (zmlxi_ad_is_float(out[j]->dtype)) st = new_value(t, out[j], &n->out_val[j]);
  return st;
}

/* ----------------------------------------------------------------- levels */

static void tape_free(ad_tape *t) {
  for (int32_t i = 0; i < t->n_nodes; i++) node_free(t->nodes[i]);
  free(t->nodes);
  free(t);
}

zmlx_status zmlxi_ad_level_push(void) {
  ad_tape *t = tls_tape;
  if (!t) {
    t = calloc(1, sizeof *t);
    if (!t) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "autograd: out of host memory (tape)");
    t->gen = new_generation();
    tls_tape = t;
  }
  if (t->n_levels == AD_MAX_LEVELS)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "autograd: grad calls nested more than %d deep",
                     AD_MAX_LEVELS);
  t->levels[t->n_levels++] = (ad_level){.node_start = t->n_nodes, .saved_paused = t->paused};
  t->paused = 0;
  return ZMLX_OK;
}

void zmlxi_ad_level_pop(void) {
  ad_tape *t = tls_tape;
  if (!t || t->n_levels == 0) return;
  t->paused = t->levels[--t->n_levels].saved_paused;
  /* Inner levels leave their nodes to the enclosing level, which may
   * differentiate through them; the outermost level takes everything. */
  if (t->n_levels == 0) {
    tls_tape = NULL;
    tape_free(t);
  }
}

zmlx_status zmlxi_ad_make_leaf(zmlx_array *view) {
  ad_tape *t = tls_tape;
  if (!t || t->n_levels == 0) return zmlxi_fail(ZMLX_ERR_INTERNAL, "autograd: leaf outside a level");
  uint32_t idx;
  return new_value(t, view, &idx);
}

int zmlxi_ad_enclosing_records(void) {
  const ad_tape *t = tls_tape;
  return t && t->n_levels > 1 && t->levels[t->n_levels - 1].saved_paused == 0;
}

int32_t zmlxi_ad_level_start(void) {
  const ad_tape *t = tls_tape;
  return t && t->n_levels ? t->levels[t->n_levels - 1].node_start : 0;
}

int32_t zmlxi_ad_node_count(void) { return tls_tape ? tls_tape->n_nodes : 0; }

zmlx_ad_node *zmlxi_ad_node_at(int32_t i) { return tls_tape->nodes[i]; }

uint32_t zmlxi_ad_value_count(void) { return tls_tape ? tls_tape->n_values : 0; }
