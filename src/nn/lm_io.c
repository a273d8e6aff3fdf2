/* zmlx_lm_save / zmlx_lm_load: a model as a safetensors file (written next
 * to the target and renamed; read whole, checked by lm_checkpoint.c against
 * its own configuration before the model is allocated, then copied into
 * the parameters). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nn/lm.h"
#include "nn/lm_checkpoint.h"
#include "nn/safetensors.h"

/* --------------------------------------------------------------- save */

static json_t *header_json(const zmlx_lm *lm, size_t *data_bytes) {
  json_t *h = json_object(), *meta = json_object(), *cfg = zmlxi_lm_config_json(&lm->cfg);
  char *cfg_text = cfg ? json_dumps(cfg, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
  size_t off = 0;
  int ok = h && meta && cfg_text &&
           !json_object_set_new(meta, "format", json_string("pt")) &&
           !json_object_set_new(meta, "zmlx.config", json_string(cfg_text));
  for (int i = 0; ok && i < lm->n_params; i++) {
    const zmlx_array *a = lm->params[i];
    ok = !zmlxi_st_add(h, lm->names[i], zmlxi_lm_st_dtype(a->dtype), a->ndim, a->shape, &off);
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

static zmlx_status read_file(const char *path, unsigned char **bytes, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return zmlxi_fail(ZMLX_ERR_IO, "zmlx_lm_load: cannot open %s", path);
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
  *bytes = b;
  *size = n;
  return ZMLX_OK;
}

/* Parameter i's bytes from the checked file. */
static zmlx_status load_param(const zmlxi_checkpoint *ck, zmlx_lm *lm, int i) {
  zmlx_array *a = lm->params[i];
  const unsigned char *src;
  size_t n;
  ZMLX_CHECK(zmlxi_st_tensor(&ck->st, lm->names[i], zmlxi_lm_st_dtype(a->dtype), a->ndim, a->shape, &src,
                             &n));
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
  unsigned char *bytes = NULL;
  size_t size = 0;
  ZMLX_CHECK(read_file(path, &bytes, &size));
  char what[4096 + 32];
  snprintf(what, sizeof what, "zmlx_lm_load: %s", path);
  zmlxi_checkpoint ck;
  zmlx_lm *lm = NULL;
  /* the whole file is checked against its configuration before the model
   * (sized by that configuration) is allocated */
  zmlx_status st = zmlxi_checkpoint_parse(what, bytes, size, &ck);
  if (st == ZMLX_OK) {
    zmlx_lm_config c = ck.cfg;
    c.device = dev;
    st = zmlx_lm_create(&c, &lm);
    for (int i = 0; st == ZMLX_OK && i < lm->n_params; i++) st = load_param(&ck, lm, i);
    zmlxi_st_free(&ck.st);
  }
  free(bytes);
  if (st != ZMLX_OK) {
    zmlx_lm_destroy(lm);
    return st;
  }
  *out = lm;
  return ZMLX_OK;
}
