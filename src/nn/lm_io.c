/* zmlx_lm checkpoints in the safetensors format (Hugging Face's: an 8-byte
 * little-endian header length, a JSON header naming each tensor's dtype,
 * shape and byte range, then the raw little-endian data), written and read
 * through jansson. The model's configuration travels in the header's
 * __metadata__ (string values, as the format requires), so a file alone
 * rebuilds the model. Reading trusts nothing: sizes, offsets, dtypes and
 * shapes are checked against the file and the configuration before any
 * byte is used. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/lm.h"

#define MAX_HEADER_BYTES (64u << 20)

static const char *st_dtype(zmlx_dtype dt) {
  return dt == ZMLX_F16 ? "F16" : dt == ZMLX_BF16 ? "BF16" : "F32";
}

/* ------------------------------------------------------------- config */

static json_t *config_json(const zmlx_lm_config *c) {
  return json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s}", "vocab", c->vocab,
                   "dim", c->dim, "layers", c->layers, "heads", c->heads, "kv_heads",
                   c->kv_heads, "ffn_dim", c->ffn_dim, "experts", c->experts, "top_k", c->top_k,
                   "rope_base", c->rope_base, "norm_eps", c->norm_eps, "dtype",
                   zmlx_dtype_name(c->dtype));
}

static zmlx_status config_from_json(const char *path, const char *text, zmlx_lm_config *c) {
  json_error_t err;
  json_t *j = json_loads(text, 0, &err);
  const char *dt = NULL;
  memset(c, 0, sizeof *c);
  c->struct_size = sizeof *c;
  int bad = !j || json_unpack_ex(j, &err, 0, "{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:F, s:F, s:s}",
                                 "vocab", &c->vocab, "dim", &c->dim, "layers", &c->layers, "heads",
                                 &c->heads, "kv_heads", &c->kv_heads, "ffn_dim", &c->ffn_dim,
                                 "experts", &c->experts, "top_k", &c->top_k, "rope_base",
                                 &c->rope_base, "norm_eps", &c->norm_eps, "dtype", &dt);
  zmlx_status st = ZMLX_OK;
  if (bad)
    st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_load: %s: the zmlx.config metadata is not a "
                   "model configuration: %s", path, err.text);
  else if (zmlx_dtype_from_name(dt, &c->dtype) != ZMLX_OK)
    st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_load: %s: unknown dtype '%s' in zmlx.config",
                   path, dt);
  json_decref(j);
  return st;
}

/* --------------------------------------------------------------- save */

static json_t *header_json(const zmlx_lm *lm, size_t *data_bytes) {
  json_t *h = json_object(), *meta = json_object(), *cfg = config_json(&lm->cfg);
  char *cfg_text = cfg ? json_dumps(cfg, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
  size_t off = 0;
  int ok = h && meta && cfg_text &&
           !json_object_set_new(meta, "format", json_string("pt")) &&
           !json_object_set_new(meta, "zmlx.config", json_string(cfg_text));
  for (int i = 0; ok && i < lm->n_params; i++) {
    const zmlx_array *a = lm->params[i];
    json_t *shape = json_array();
    for (int d = 0; shape && d < a->ndim; d++) json_array_append_new(shape, json_integer(a->shape[d]));
    size_t n = zmlx_array_nbytes(a);
    ok = shape && !json_object_set_new(h, lm->names[i],
                                       json_pack("{s:s, s:o, s:[I, I]}", "dtype", st_dtype(a->dtype),
                                                 "shape", shape, "data_offsets", (json_int_t)off,
                                                 (json_int_t)(off + n)));
    off += n;
  }
  if (ok) ok = !json_object_set_new(h, "__metadata__", meta), meta = NULL;
  free(cfg_text);
  json_decref(cfg);
  json_decref(meta);
  if (!ok) {
    json_decref(h);
    return NULL;
  }
  *data_bytes = off;
  return h;
}

static zmlx_status write_all(FILE *f, const void *p, size_t n, const char *path) {
  if (n && fwrite(p, 1, n, f) != n)
    return zmlxi_fail(ZMLX_ERR_IO, "zmlx_lm_save: writing %s failed", path);
  return ZMLX_OK;
}

zmlx_status zmlx_lm_save(const zmlx_lm *lm, const char *path) {
  ZMLX_REQUIRE_ARG(lm);
  ZMLX_REQUIRE_ARG(path);
  size_t data_bytes = 0;
  json_t *h = header_json(lm, &data_bytes);
  char *text = h ? json_dumps(h, JSON_COMPACT) : NULL;
  json_decref(h);
  if (!text) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_lm_save: building the header failed");
  size_t len = strlen(text), padded = (len + 7) & ~(size_t)7; /* data 8-byte aligned */
  unsigned char le[8];
  for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)padded >> (8 * i));
  /* written next to the target and renamed: a reader never sees half a file */
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "wb");
  zmlx_status st = f ? ZMLX_OK : zmlxi_fail(ZMLX_ERR_IO, "zmlx_lm_save: cannot create %s", tmp);
  if (st == ZMLX_OK) st = write_all(f, le, 8, path);
  if (st == ZMLX_OK) st = write_all(f, text, len, path);
  for (size_t i = len; st == ZMLX_OK && i < padded; i++) st = write_all(f, " ", 1, path);
  for (int i = 0; st == ZMLX_OK && i < lm->n_params; i++) {
    size_t n = zmlx_array_nbytes(lm->params[i]);
    void *buf = malloc(n ? n : 1);
    st = buf ? zmlx_array_to_host(lm->params[i], buf, n)
             : zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "out of host memory");
    if (st == ZMLX_OK) st = write_all(f, buf, n, path);
    free(buf);
  }
  if (f && fclose(f) != 0 && st == ZMLX_OK)
    st = zmlxi_fail(ZMLX_ERR_IO, "zmlx_lm_save: closing %s failed", tmp);
  if (st == ZMLX_OK && rename(tmp, path) != 0)
    st = zmlxi_fail(ZMLX_ERR_IO, "zmlx_lm_save: cannot rename %s to %s", tmp, path);
  if (st != ZMLX_OK) remove(tmp);
  free(text);
  return st;
}

/* --------------------------------------------------------------- load */

typedef struct st_file {
  const char *path;
  unsigned char *bytes;
  size_t size, header_len;
  json_t *header;
} st_file;

static zmlx_status read_file(st_file *sf) {
  FILE *f = fopen(sf->path, "rb");
  if (!f) return zmlxi_fail(ZMLX_ERR_IO, "zmlx_lm_load: cannot open %s", sf->path);
  size_t cap = 1 << 16, n = 0;
  unsigned char *b = malloc(cap);
  for (size_t got; b && (got = fread(b + n, 1, cap - n, f)) > 0;) {
    n += got;
    if (n == cap) {
      unsigned char *nb = realloc(b, cap *= 2);
      if (!nb) free(b);
      b = nb;
    }
  }
  fclose(f);
  if (!b) return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "zmlx_lm_load: out of host memory");
  sf->bytes = b;
  sf->size = n;
  return ZMLX_OK;
}

static zmlx_status parse_header(st_file *sf) {
  if (sf->size < 8)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_load: %s: %zu bytes, too short for a "
                     "safetensors file", sf->path, sf->size);
  uint64_t len = 0;
  for (int i = 7; i >= 0; i--) len = len << 8 | sf->bytes[i];
  if (len > sf->size - 8 || len > MAX_HEADER_BYTES)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_load: %s: the header claims %llu bytes, the "
                     "file has %zu after the length (truncated or not safetensors)", sf->path,
                     (unsigned long long)len, sf->size - 8);
  sf->header_len = (size_t)len;
  json_error_t err;
  sf->header = json_loadb((const char *)sf->bytes + 8, sf->header_len, 0, &err);
  if (!sf->header || !json_is_object(sf->header))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_load: %s: bad JSON header at line %d, column "
                     "%d: %s", sf->path, err.line, err.column, sf->header ? "not an object" : err.text);
  return ZMLX_OK;
}

/* Parameter i's bytes from the file, after checking its entry. */
static zmlx_status load_param(st_file *sf, zmlx_lm *lm, int i) {
  zmlx_array *a = lm->params[i];
  const char *name = lm->names[i], *dt = NULL;
  json_t *e = json_object_get(sf->header, name), *shape = NULL;
  json_int_t lo = -1, hi = -1;
  json_error_t err;
  if (!e || json_unpack_ex(e, &err, 0, "{s:s, s:o, s:[I, I]}", "dtype", &dt, "shape", &shape,
                           "data_offsets", &lo, &hi))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_load: %s: tensor '%s' %s", sf->path, name,
                     e ? err.text : "is missing");
  int same = json_is_array(shape) && (int)json_array_size(shape) == a->ndim;
  for (int d = 0; same && d < a->ndim; d++)
    same = json_integer_value(json_array_get(shape, (size_t)d)) == a->shape[d];
  char want[96];
  if (!same || strcmp(dt, st_dtype(a->dtype)))
    return zmlxi_fail(ZMLX_ERR_SHAPE, "zmlx_lm_load: %s: tensor '%s' is %s of another shape than "
                     "the configuration's %s %s", sf->path, name, dt,
                     zmlxi_shape_str(want, sizeof want, a->ndim, a->shape), st_dtype(a->dtype));
  const size_t data = sf->size - 8 - sf->header_len, n = zmlx_array_nbytes(a);
  if (lo < 0 || hi < lo || (size_t)hi > data || (size_t)(hi - lo) != n)
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_load: %s: tensor '%s' spans bytes [%lld, "
                     "%lld) of %zu data bytes; it needs %zu (truncated or corrupt)", sf->path, name,
                     (long long)lo, (long long)hi, data, n);
  const unsigned char *src = sf->bytes + 8 + sf->header_len + lo;
  zmlx_array *fresh = NULL;
  ZMLX_CHECK(zmlx_array_from_host(lm->cfg.device, a->dtype, a->ndim, a->shape, src, &fresh));
  zmlx_array_release(lm->params[i]);
  lm->params[i] = fresh;
  return ZMLX_OK;
}

zmlx_status zmlx_lm_load(const char *path, zmlx_device *dev, zmlx_lm **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  ZMLX_REQUIRE_ARG(path);
  st_file sf = {.path = path};
  zmlx_lm_config c;
  zmlx_lm *lm = NULL;
  zmlx_status st = read_file(&sf);
  if (st == ZMLX_OK) st = parse_header(&sf);
  json_t *meta = st == ZMLX_OK ? json_object_get(sf.header, "__metadata__") : NULL;
  const char *cfg = meta ? json_string_value(json_object_get(meta, "zmlx.config")) : NULL;
  if (st == ZMLX_OK && !cfg)
    st = zmlxi_fail(ZMLX_ERR_INVALID_ARG, "zmlx_lm_load: %s: no zmlx.config in the header's "
                   "__metadata__ (not written by zmlx_lm_save)", path);
  if (st == ZMLX_OK) st = config_from_json(path, cfg, &c);
  if (st == ZMLX_OK) {
    c.device = dev;
    st = zmlx_lm_create(&c, &lm);
  }
  for (int i = 0; st == ZMLX_OK && i < lm->n_params; i++) st = load_param(&sf, lm, i);
  json_decref(sf.header);
  free(sf.bytes);
  if (st != ZMLX_OK) {
    zmlx_lm_destroy(lm);
    return st;
  }
  *out = lm;
  return ZMLX_OK;
}
