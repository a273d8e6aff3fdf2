/*
 * libFuzzer target for the checkpoint reader (src/nn/safetensors.c,
 * lm_checkpoint.c, lm_plan.c): zmlx_lm_load reads files that may come from
 * anywhere. Oracles:
 *   - any bytes as a file: parsed without a crash, a leak or a sanitizer
 *     report; every tensor the reader accepts (with the dtype and shape its
 *     entry declares) lies inside the data, and all its bytes are read (the
 *     input sits in a buffer of exactly its size, so an overread is an ASan
 *     report); a file accepted as a checkpoint holds every parameter of its
 *     configuration that way;
 *   - a model configuration taken from the input, written as a checkpoint
 *     (zmlx.config, the plan's tensors through zmlxi_st_add, data from the
 *     input), reads back OK with the same configuration and bytes; with
 *     the data cut short it is refused.
 *
 *   make fuzz   (builds it with clang in build-fuzz and runs it)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/lm_checkpoint.h"
#include "nn/lm_plan.h"

static volatile unsigned sink;

static void touch(const unsigned char *p, size_t n) {
  unsigned s = 0;
  for (size_t i = 0; i < n; i++) s += p[i];
  sink += s;
}

/* an entry's declared dtype and shape, when they are well formed */
static int declared(json_t *e, const char **dtype, int *ndim, int64_t *shape) {
  json_t *dt = json_object_get(e, "dtype"), *js = json_object_get(e, "shape");
  if (!json_is_string(dt) || !json_is_array(js) || json_array_size(js) > 8) return 0;
  *dtype = json_string_value(dt);
  *ndim = (int)json_array_size(js);
  for (int d = 0; d < *ndim; d++) {
    json_t *v = json_array_get(js, (size_t)d);
    if (!json_is_integer(v)) return 0;
    shape[d] = json_integer_value(v);
  }
  return 1;
}

static void any_bytes_as_tensors(const zmlxi_st *st) {
  const char *name;
  json_t *e;
  json_object_foreach(st->header, name, e) {
    const char *dtype;
    int ndim;
    int64_t shape[8];
    if (!declared(e, &dtype, &ndim, shape)) continue;
    const unsigned char *p = NULL;
    size_t n = 0;
    if (zmlxi_st_tensor(st, name, dtype, ndim, shape, &p, &n) != ZMLX_OK) continue;
    if (p < st->data || n > st->data_size || (size_t)(p - st->data) > st->data_size - n) abort();
    touch(p, n);
  }
}

/* a zmlxi_lm_param_fn: an accepted checkpoint holds this parameter */
static zmlx_status must_hold(void *ud, int layer, const char *name, int ndim, const int64_t *shape,
                             double std, double fill) {
  (void)layer, (void)std, (void)fill;
  const zmlxi_checkpoint *ck = ud;
  const unsigned char *p = NULL;
  size_t n = 0;
  if (zmlxi_st_tensor(&ck->st, name, zmlxi_lm_st_dtype(ck->cfg.dtype), ndim, shape, &p, &n) !=
      ZMLX_OK)
    abort();
  touch(p, n);
  return ZMLX_OK;
}

/* ------------------------------------------------------ the writer side */

typedef struct writer {
  json_t *header;
  const char *dtype;
  size_t offset;
} writer;

static zmlx_status add(void *ud, int layer, const char *name, int ndim, const int64_t *shape,
                       double std, double fill) {
  (void)layer, (void)std, (void)fill;
  writer *w = ud;
  if (zmlxi_st_add(w->header, name, w->dtype, ndim, shape, &w->offset)) abort();
  return ZMLX_OK;
}

/* a small configuration from the input (sizes 1..8, dims a multiple of
 * heads: most are valid, some are not, on purpose) */
static zmlx_lm_config config_from(const uint8_t *d) {
  static const zmlx_dtype dts[3] = {ZMLX_F32, ZMLX_F16, ZMLX_BF16};
  zmlx_lm_config c = {.struct_size = sizeof c};
  c.heads = 1 + d[0] % 4;
  c.kv_heads = 1 + d[1] % 4;
  c.dim = c.heads * 2 * (1 + d[2] % 4);
  c.vocab = 1 + d[3] % 16;
  c.layers = 1 + d[4] % 3;
  c.ffn_dim = 1 + d[5] % 8;
  c.experts = d[6] % 4;
  c.top_k = d[7] % 4;
  c.dtype = dts[d[8] % 3];
  return c;
}

static void written_checkpoint_reads_back(const uint8_t *data, size_t size) {
  if (size < 9) return;
  zmlx_lm_config raw = config_from(data), c;
  if (zmlxi_lm_check_config(&raw, &c) != ZMLX_OK) return;
  writer w = {json_object(), zmlxi_lm_st_dtype(c.dtype), 0};
  json_t *meta = json_object(), *cfg = zmlxi_lm_config_json(&c);
  char *cfg_text = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
  if (!w.header || !meta || !cfg_text || json_object_set_new(meta, "zmlx.config",
                                                              json_string(cfg_text)) ||
      json_object_set_new(w.header, "__metadata__", meta))
    abort();
  if (zmlxi_lm_plan(&c, add, &w) != ZMLX_OK) abort();
  char *text = json_dumps(w.header, JSON_COMPACT);
  if (!text) abort();
  size_t hl = strlen(text), len = 8 + hl + w.offset;
  unsigned char *file = malloc(len);
  if (!file) abort();
  for (int i = 0; i < 8; i++) file[i] = (unsigned char)((uint64_t)hl >> (8 * i));
  memcpy(file + 8, text, hl);
  for (size_t i = 0; i < w.offset; i++) file[8 + hl + i] = data[i % size];
  zmlxi_checkpoint ck;
  if (zmlxi_checkpoint_parse("fuzz", file, len, &ck) != ZMLX_OK) abort();
  if (ck.cfg.vocab != c.vocab || ck.cfg.dim != c.dim || ck.cfg.layers != c.layers ||
      ck.cfg.heads != c.heads || ck.cfg.kv_heads != c.kv_heads || ck.cfg.ffn_dim != c.ffn_dim ||
      ck.cfg.experts != c.experts || ck.cfg.top_k != c.top_k || ck.cfg.dtype != c.dtype)
    abort();
  const unsigned char *p;
  size_t n;
  if (zmlxi_st_tensor(&ck.st, "embed", w.dtype, 2, (int64_t[]){c.vocab, c.dim}, &p, &n) ||
      p != file + 8 + hl || memcmp(p, data, n < size ? n : size) != 0)
    abort();
  zmlxi_st_free(&ck.st);
  /* the data cut short by at least one byte is refused */
  size_t cut = 8 + hl + (w.offset ? (size_t)data[size - 1] % w.offset : 0);
  if (w.offset && zmlxi_checkpoint_parse("fuzz", file, cut, &ck) == ZMLX_OK) abort();
  free(file);
  free(text);
  free(cfg_text);
  json_decref(cfg);
  json_decref(w.header);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  unsigned char *bytes = malloc(size ? size : 1); /* exactly the input: overreads are reported */
  if (!bytes) abort();
  if (size) memcpy(bytes, data, size);
  zmlxi_st st;
  if (zmlxi_st_parse("fuzz", bytes, size, &st) == ZMLX_OK) {
    any_bytes_as_tensors(&st);
    zmlxi_st_free(&st);
  }
  zmlxi_checkpoint ck;
  if (zmlxi_checkpoint_parse("fuzz", bytes, size, &ck) == ZMLX_OK) {
    if (zmlxi_lm_plan(&ck.cfg, must_hold, &ck) != ZMLX_OK) abort();
    zmlxi_st_free(&ck.st);
  }
  free(bytes);
  written_checkpoint_reads_back(data, size);
  return 0;
}
